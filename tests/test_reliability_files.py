"""Corrupt model files through the CLI, each in its own subprocess: a clear error naming the file and
exit status 1, never a crash (a negative status is a signal), a hang or a huge allocation.

The cases are made from a small valid GGUF (scripts/fuzz_gguf.py's seed model, which llama.cpp loads
and runs) and from the bundled model's header; tests/data/gguf_corpus/ holds the findings of the
budgeted fuzz run (scripts/fuzz_gguf.py): files that passed validation and then made llama.cpp abort,
before the validator learnt to reject them.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, RUN_WITH_PEAK_RSS, peak_rss_kib

pytest.importorskip("gguf", reason="the gguf package builds the test files (pip install gguf)")
sys.path.insert(0, str(REPO / "scripts"))
from fuzz_gguf import int_fields, tiny_model  # noqa: E402

CORPUS = sorted((REPO / "tests" / "data" / "gguf_corpus").glob("*.gguf"))


def run_model(path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITH_PEAK_RSS, str(path), "-p", "hi", "-n", "1", "--ctx", "64"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_clean_error(r: subprocess.CompletedProcess, path: Path, *fragments: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])  # an error exit: not a signal, not 0
    assert str(path) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr
    maxrss = peak_rss_kib(r.stderr)
    assert maxrss < 1024 * 1024, maxrss  # < 1 GiB: nothing huge was allocated


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("seed") / "seed.gguf")


def test_seed_model_runs(seed):
    """The valid file the broken ones are made from loads and answers (so the errors below are the
    corruption's, not the seed's)."""
    r = run_model(seed)
    assert r.returncode == 0, r.stderr[-2000:]


def _patched(seed: Path, dst: Path, what: str, value: int) -> Path:
    fields, _ = int_fields(seed)
    off, size, _ = next(f for f in fields if f[2] == what)
    data = bytearray(seed.read_bytes())
    data[off : off + size] = value.to_bytes(size, "little")
    dst.write_bytes(bytes(data))
    return dst


def _write(dst: Path, data: bytes) -> Path:
    dst.write_bytes(data)
    return dst


CASES = {
    # name: (make(seed, dst) -> path, fragments of the message)
    "wrong-magic": (lambda s, d: _write(d, b"GGUX" + s.read_bytes()[4:]), ("not a GGUF file",)),
    "html-page": (lambda s, d: _write(d, b"<!DOCTYPE html><html>404</html>" * 9), ("HTML",)),
    "empty": (lambda s, d: _write(d, b""), ("not a GGUF file",)),
    "truncated-header": (lambda s, d: _write(d, s.read_bytes()[:200]), ("truncated",)),
    "truncated-data": (lambda s, d: _write(d, s.read_bytes()[:-1000]), ("truncated",)),
    "version-big-endian": (lambda s, d: _patched(s, d, "version", 3 << 24), ("big-endian",)),
    "tensor-count-absurd": (lambda s, d: _patched(s, d, "n_tensors", 1 << 40), ("absurd tensor count",)),
    "kv-count-absurd": (lambda s, d: _patched(s, d, "n_kv", (1 << 64) - 1), ("absurd metadata count",)),
    "tensor-dim-absurd": (lambda s, d: _patched(s, d, "output.weight.ne[1]", 1 << 62), ("output.weight",)),
    "tensor-dims-count": (lambda s, d: _patched(s, d, "output.weight.n_dims", 9), ("dimensions",)),
    "tensor-type-unknown": (lambda s, d: _patched(s, d, "output.weight.type", 99), ("unknown tensor type",)),
    "tensor-offset-past-end": (
        lambda s, d: _patched(s, d, "output.weight.offset", 1 << 40),
        ("past the end",),
    ),
    "string-length-absurd": (
        lambda s, d: _patched(s, d, "token_embd.weight.name_len", 1 << 60),
        ("string length",),
    ),
    "block-count-zero": (lambda s, d: _patched(s, d, "llama.block_count[3]", 0), ("block_count",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_corrupt_file_is_a_clean_error(seed, tmp_path, name):
    make, fragments = CASES[name]
    path = make(seed, tmp_path / f"{name}.gguf")
    assert_clean_error(run_model(path), path, *fragments)


def test_directory_instead_of_file(tmp_path):
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    assert_clean_error(run_model(folder), folder, "is a directory")


@pytest.mark.slow  # twelve subprocesses
def test_random_header_bytes_never_crash(seed, tmp_path):
    """Twelve files with one header byte flipped each: each ends in an answer or a clean error."""
    import random

    fields, header_end = int_fields(seed)
    rng = random.Random(4)
    data = seed.read_bytes()
    for i in range(12):
        at = rng.randrange(4, header_end)
        broken = bytearray(data)
        broken[at] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{i}-at{at}.gguf"
        path.write_bytes(bytes(broken))
        r = run_model(path)
        assert r.returncode in (0, 1), (at, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 1:
            assert str(path) in r.stderr, r.stderr


@pytest.mark.skipif(not CORPUS, reason="no fuzz corpus")
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_fuzz_corpus_is_rejected(path):
    """Each of these made llama.cpp abort (GGML_ASSERT) before the validator rejected it."""
    from radar_gguf.gguf_check import GGUFError, check_gguf

    with pytest.raises(GGUFError):
        check_gguf(path)
    assert_clean_error(run_model(path), path)


def test_bundled_model_header_with_absurd_tensor_count(tmp_path, model_path):
    head = bytearray(open(model_path, "rb").read(4 << 20))
    struct.pack_into("<Q", head, 8, 1 << 50)
    path = tmp_path / "bundled-absurd.gguf"
    path.write_bytes(bytes(head))
    assert_clean_error(run_model(path), path, "absurd tensor count")
