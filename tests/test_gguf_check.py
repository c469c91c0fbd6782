"""Tests for radar_gguf.gguf_check: GGUF header validation before llama.cpp sees a file.

Valid files are written with the ``gguf`` package's GGUFWriter (and checked against its GGUFReader);
broken ones are made by patching bytes of valid files, or by a small raw writer for what GGUFWriter
refuses to produce. Every failure must be a GGUFError whose message names the file.
"""

from __future__ import annotations

import builtins
import os
import random
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package builds the test files (pip install gguf)")

from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter  # noqa: E402

from radar_gguf import gguf_check  # noqa: E402
from radar_gguf.gguf_check import GGML_TYPES, GGUFError, GGUFInfo, check_gguf  # noqa: E402

# --------------------------------------------------------------------------- helpers


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    kv: Optional[Callable[[GGUFWriter], None]] = None,
    tensors: Optional[Sequence[tuple[str, np.ndarray, Optional[GGMLQuantizationType]]]] = None,
    model_keys: bool = True,
    split_max_tensors: int = 0,
) -> Path:
    """A small GGUF made by GGUFWriter: a 2-layer 'llama' with F32, F16 and Q8_0 tensors by default."""
    w = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    if model_keys:
        w.add_name("tiny test model")
        w.add_context_length(4096)
        w.add_block_count(2)
        w.add_embedding_length(64)
        w.add_head_count(4)
        w.add_head_count_kv(2)
    if kv:
        kv(w)
    if tensors is None:
        tensors = [
            ("token_embd.weight", np.arange(2 * 64, dtype=np.float32).reshape(2, 64), None),
            ("blk.0.attn_q.weight", np.ones((8, 64), np.float16), None),
            ("blk.0.attn_k.weight", np.zeros((4, 34), np.uint8), GGMLQuantizationType.Q8_0),
        ]
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def expect_error(path: Path, *fragments: str) -> GGUFError:
    """check_gguf(path) must raise GGUFError naming the file (and nothing else)."""
    try:
        check_gguf(path)
    except GGUFError as e:
        msg = str(e)
        assert str(path) in msg, msg
        for fragment in fragments:
            assert fragment in msg, msg
        return e
    except Exception as e:  # pragma: no cover - the point of the module is that this never happens
        pytest.fail(f"check_gguf raised {type(e).__name__} instead of GGUFError: {e}")
    pytest.fail(f"check_gguf accepted {path}")


def patched(src: Path, dst: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


def after_key(data: bytes, key: str) -> int:
    """Offset of the value type (u32) that follows metadata key ``key``."""
    kb = key.encode()
    i = data.index(struct.pack("<Q", len(kb)) + kb)
    return i + 8 + len(kb)


def tensor_info_at(data: bytes, name: str) -> int:
    """Offset of n_dims of tensor ``name`` (right after its name in the tensor infos)."""
    nb = name.encode()
    return data.index(struct.pack("<Q", len(nb)) + nb) + 8 + len(nb)


# A minimal raw writer, for files GGUFWriter refuses to make.
def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def kv_str(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def raw_gguf(
    kvs: Sequence[bytes],
    tensors: Sequence[tuple[str, Sequence[int], int, int]] = (),
    data: bytes = b"",
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, ttype, offset in tensors:
        out += _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ttype, offset)
    if tensors:
        out += b"\0" * (-len(out) % alignment)
    return out + data


# --------------------------------------------------------------------------- valid files


def test_valid_tiny(tiny: Path) -> None:
    info = check_gguf(tiny)
    assert isinstance(info, GGUFInfo)
    assert info.path == tiny
    assert info.version == 3
    assert info.n_tensors == 3
    assert info.architecture == "llama"
    assert info.name == "tiny test model"
    assert (info.context_length, info.n_layer, info.n_embd) == (4096, 2, 64)
    assert (info.n_head, info.n_head_kv, info.head_dim) == (4, 2, 16)
    assert info.file_size == tiny.stat().st_size
    assert info.split_count == 1 and info.split_files == ()
    assert info.alignment == 32

    reader = GGUFReader(tiny)
    assert info.n_kv == len(reader.fields) - 3  # GGUFReader adds 3 pseudo-fields for the header
    assert info.data_offset == reader.data_offset
    assert [t.name for t in info.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(info.tensors, reader.tensors):
        assert mine.nbytes == theirs.n_bytes
        assert mine.offset == theirs.data_offset - reader.data_offset
        assert list(mine.shape) == [int(d) for d in theirs.shape]
        assert mine.type_id == int(theirs.tensor_type)
    assert [t.type_name for t in info.tensors] == ["F32", "F16", "Q8_0"]
    # GGUFWriter pads the data section after the last tensor too
    assert 0 <= info.file_size - (info.data_offset + info.tensor_data_size) < info.alignment


def test_str_path_and_version_2(tiny: Path, tmp_path: Path) -> None:
    v2 = patched(tiny, tmp_path / "v2.gguf", 4, "<I", 2)  # v2 and v3 headers are the same little-endian
    info = check_gguf(str(v2))
    assert info.version == 2 and info.path == v2


def test_key_length_wins_and_kv_heads_default(tmp_path: Path) -> None:
    def keys(w: GGUFWriter) -> None:
        w.add_context_length(8192)
        w.add_block_count(3)
        w.add_embedding_length(96)
        w.add_head_count(6)
        w.add_key_length(32)

    info = check_gguf(write_gguf(tmp_path / "k.gguf", "qwen3", kv=keys, model_keys=False))
    assert info.architecture == "qwen3"
    assert (info.context_length, info.n_layer, info.n_head, info.n_head_kv) == (8192, 3, 6, 6)
    assert info.head_dim == 32  # key_length, not 96 / 6


def test_per_layer_head_counts(tmp_path: Path) -> None:
    def keys(w: GGUFWriter) -> None:
        w.add_embedding_length(64)
        w.add_array("llama.attention.head_count", [4, 8, 4])
        w.add_array("llama.attention.head_count_kv", [1, 2, 1])

    info = check_gguf(write_gguf(tmp_path / "arr.gguf", kv=keys, model_keys=False))
    assert (info.n_head, info.n_head_kv, info.head_dim) == (8, 2, 8)


def test_without_model_keys_or_tensors(tmp_path: Path) -> None:
    info = check_gguf(write_gguf(tmp_path / "bare.gguf", model_keys=False, tensors=[]))
    assert info.n_tensors == 0 and info.tensors == ()
    assert info.architecture == "llama"
    assert info.context_length is info.n_layer is info.n_head is info.n_head_kv is info.head_dim is None


def test_custom_alignment(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "a64.gguf", kv=lambda w: w.add_custom_alignment(64))
    info = check_gguf(path)
    assert info.alignment == 64
    assert info.data_offset % 64 == 0 and info.data_offset == GGUFReader(path).data_offset
    assert [t.offset % 64 for t in info.tensors] == [0, 0, 0]


def test_large_vocabulary_is_skipped_correctly(tmp_path: Path) -> None:
    """A string array larger than the read-ahead buffer (the tokenizer case)."""
    tokens = [f"t{i:05d}" * (1 + i % 7) for i in range(8_000)]
    path = write_gguf(
        tmp_path / "vocab.gguf",
        kv=lambda w: (w.add_token_list(tokens), w.add_token_types([1] * len(tokens))),
    )
    info = check_gguf(path)
    assert info.data_offset == GGUFReader(path).data_offset > 2 * gguf_check._CHUNK
    assert info.n_head == 4
    # truncated inside the vocabulary, around buffer boundaries and elsewhere
    data = path.read_bytes()
    cut = tmp_path / "vocab-cut.gguf"
    points = {gguf_check._CHUNK + d for d in range(-9, 10)} | set(range(200, info.data_offset, 4099))
    for n in sorted(points):
        cut.write_bytes(data[:n])
        expect_error(cut, "truncated")


@pytest.mark.parametrize("type_id", sorted(GGML_TYPES))
def test_every_tensor_type(tmp_path: Path, type_id: int) -> None:
    name, block, type_size = GGML_TYPES[type_id]
    nbytes = 2 * type_size * 3  # two blocks per row, three rows
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(raw_gguf([kv_str("general.architecture", "llama")], [("t", [2 * block, 3], type_id, 0)]))
    with open(path, "ab") as f:
        f.write(b"\0" * nbytes)
    info = check_gguf(path)
    assert info.tensors[0].nbytes == nbytes and info.tensors[0].type_name == name
    os.truncate(path, path.stat().st_size - 1)
    expect_error(
        path, "truncated", f"expected at least {info.file_size} bytes, file has {info.file_size - 1}"
    )


def test_type_table_matches_gguf_package() -> None:
    """Our table is ggml 0.25.3's; gguf-py agrees except on Q8_1, which it still sizes as 40 bytes."""
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES and qtype.name != "Q8_1":
            assert GGML_TYPES[int(qtype)][1:] == (block, size), qtype.name
            assert GGML_TYPES[int(qtype)][0] == qtype.name


def test_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_gguf(tmp_path / "big.gguf", tensors=[("w", np.zeros((1024, 1024), np.float32), None)])
    read = 0
    real_open = builtins.open

    class Counting:
        def __init__(self, f) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            nonlocal read
            b = self.f.read(n)
            read += len(b)
            return b

        def __getattr__(self, name: str):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    monkeypatch.setattr(gguf_check, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    info = check_gguf(path)
    assert info.tensor_data_size == 4 << 20
    assert 0 < read <= gguf_check._CHUNK < info.tensor_data_size


# --------------------------------------------------------------------------- not files, not GGUF


def test_missing_file(tmp_path: Path) -> None:
    e = expect_error(tmp_path / "nope.gguf", "no such file")
    assert isinstance(e, ValueError) and e.path == tmp_path / "nope.gguf"


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    expect_error(tmp_path / "empty.gguf", "not a GGUF file", "file has 0")


@pytest.mark.parametrize(
    ("head", "hint"),
    [
        (b"FUGG", ""),
        (b"lmgg", "old GGML"),
        (b"tjgg", "old GGML"),
        (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html>", "HTML"),
        (b"PK\x03\x04", "zip"),
    ],
)
def test_not_gguf(tiny: Path, tmp_path: Path, head: bytes, hint: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(head + tiny.read_bytes()[len(head) :])
    expect_error(bad, "not a GGUF file", hint)


@pytest.mark.parametrize(
    ("version", "fragment"),
    [(99, "unsupported GGUF version 99"), (0, "unsupported GGUF version 0"), (1, "version 1 is no longer")],
)
def test_bad_version(tiny: Path, tmp_path: Path, version: int, fragment: str) -> None:
    expect_error(patched(tiny, tmp_path / "v.gguf", 4, "<I", version), fragment)


def test_big_endian_version(tiny: Path, tmp_path: Path) -> None:
    expect_error(patched(tiny, tmp_path / "be.gguf", 4, ">I", 3), "big-endian")


# --------------------------------------------------------------------------- truncation


def test_truncated_everywhere(tiny: Path, tmp_path: Path) -> None:
    """Cut the file at every byte: magic, version, counts, every KV, the tensor infos, the data."""
    data = tiny.read_bytes()
    info = check_gguf(tiny)
    end = info.data_offset + info.tensor_data_size  # only the padding after this may go
    assert info.data_offset > 300  # a header of some size, with every kind of field
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data)
    for n in range(len(data) - 1, -1, -1):
        os.truncate(cut, n)
        if n >= end:
            assert check_gguf(cut).file_size == n
        else:
            expect_error(cut, "truncated")


def test_truncated_data_message(tiny: Path, tmp_path: Path) -> None:
    info = check_gguf(tiny)
    end = info.data_offset + info.tensor_data_size
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[: end - 10])
    expect_error(
        cut,
        f"truncated: expected at least {end} bytes, file has {end - 10}",
        "tensor 'blk.0.attn_k.weight'",
    )


def test_truncated_padding_after_last_tensor_is_fine(tmp_path: Path) -> None:
    """The data section may end right after the last tensor, without the final padding."""
    path = tmp_path / "nopad.gguf"
    path.write_bytes(raw_gguf([], [("a", [3], 0, 0)], data=b"\0" * 12))
    assert check_gguf(path).tensor_data_size == 12


# --------------------------------------------------------------------------- corrupt counts and lengths


def test_absurd_tensor_count(tiny: Path, tmp_path: Path) -> None:
    expect_error(patched(tiny, tmp_path / "nt.gguf", 8, "<Q", 2**60), "absurd tensor count")


def test_absurd_kv_count(tiny: Path, tmp_path: Path) -> None:
    expect_error(patched(tiny, tmp_path / "nkv.gguf", 16, "<Q", 2**60), "absurd metadata count")


def test_more_kv_than_present(tiny: Path, tmp_path: Path) -> None:
    """A count that is plausible but wrong reads tensor infos as keys: still only GGUFError."""
    n_kv = check_gguf(tiny).n_kv
    for extra in (1, 2, 3, 50):
        expect_error(patched(tiny, tmp_path / "nkv.gguf", 16, "<Q", n_kv + extra))
    for n_tensors in (4, 5, 1000):
        expect_error(patched(tiny, tmp_path / "nt.gguf", 8, "<Q", n_tensors))


def test_huge_key_length(tiny: Path, tmp_path: Path) -> None:
    expect_error(patched(tiny, tmp_path / "key.gguf", 24, "<Q", 2**62), "string length 4611686018427387904")


def test_huge_string_value_length(tiny: Path, tmp_path: Path) -> None:
    off = after_key(tiny.read_bytes(), "general.architecture") + 4
    expect_error(patched(tiny, tmp_path / "val.gguf", off, "<Q", 2**62), "beyond the file size")


def test_long_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "longkey.gguf"
    path.write_bytes(raw_gguf([kv_u32("k" * 70_000, 1)]))
    expect_error(path, "exceeds the limit of 65535 bytes")


def test_huge_array_length(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "arr.gguf", kv=lambda w: w.add_array("test.numbers", [1, 2, 3]))
    off = after_key(path.read_bytes(), "test.numbers") + 8
    expect_error(
        patched(path, tmp_path / "arr2.gguf", off, "<Q", 2**61), "array length", "beyond the file size"
    )


def test_huge_string_array_length(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "sarr.gguf", kv=lambda w: w.add_token_list(["a", "bb", "ccc"]))
    data = path.read_bytes()
    off = after_key(data, "tokenizer.ggml.tokens") + 8
    expect_error(
        patched(path, tmp_path / "s2.gguf", off, "<Q", 2**61), "array length", "beyond the file size"
    )
    first = off + 8  # the length of the first string in the array
    expect_error(
        patched(path, tmp_path / "s3.gguf", first, "<Q", 2**62), "string length", "beyond the file size"
    )


def test_unknown_value_type(tiny: Path, tmp_path: Path) -> None:
    off = after_key(tiny.read_bytes(), "llama.block_count")
    expect_error(
        patched(tiny, tmp_path / "vt.gguf", off, "<I", 77), "key 'llama.block_count'", "unknown value type 77"
    )


def test_nested_array(tmp_path: Path) -> None:
    nested = _s("x.nested") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 5)
    path = tmp_path / "nested.gguf"
    path.write_bytes(raw_gguf([nested]))
    expect_error(path, "nested arrays")


def test_duplicate_and_empty_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.gguf"
    path.write_bytes(raw_gguf([kv_u32("a.b", 1), kv_u32("a.b", 2)]))
    expect_error(path, "duplicate key 'a.b'")
    path.write_bytes(raw_gguf([kv_u32("", 1)]))
    expect_error(path, "key 0 is empty")


def test_model_key_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "ctx.gguf"
    path.write_bytes(
        raw_gguf([kv_str("general.architecture", "llama"), kv_str("llama.context_length", "lots")])
    )
    expect_error(path, "key 'llama.context_length' has type string, expected an integer")
    path.write_bytes(raw_gguf([kv_u32("general.architecture", 3)]))
    expect_error(path, "general.architecture", "expected a string")


@pytest.mark.parametrize(
    ("alignment_kv", "fragment"),
    [
        (kv_u32("general.alignment", 3), "not a power of 2"),
        (kv_u32("general.alignment", 0), "not a power of 2"),
        (_s("general.alignment") + struct.pack("<IQ", 10, 64), "must be of type u32 but is u64"),
    ],
    ids=["3", "0", "u64"],
)
def test_bad_alignment(tmp_path: Path, alignment_kv: bytes, fragment: str) -> None:
    path = tmp_path / "align.gguf"
    path.write_bytes(raw_gguf([alignment_kv]))
    expect_error(path, fragment)


def test_random_header_corruption_gives_only_gguf_errors(tmp_path: Path) -> None:
    """Seeded fuzzing of the header bytes: check_gguf either accepts the file or raises GGUFError."""
    path = write_gguf(
        tmp_path / "fuzz.gguf",
        kv=lambda w: (
            w.add_token_list(["a", "bb", "ccc"]),
            w.add_array("x.arr", [1, 2, 3]),
            w.add_custom_alignment(64),
        ),
    )
    base = path.read_bytes()
    header = check_gguf(path).data_offset
    rng = random.Random(1234)
    values = [0, 1, 5, 2**31, 2**32 - 1, 2**63, 2**64 - 1]
    outcomes = {"ok": 0, "error": 0}
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(1500):
            data = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(header - 8)
                if rng.random() < 0.5:
                    data[i] = rng.randrange(256)
                else:
                    struct.pack_into("<Q", data, i, rng.choice(values + [rng.randrange(2**64)]))
            os.pwrite(fd, bytes(data[:header]), 0)
            try:
                check_gguf(path)
                outcomes["ok"] += 1
            except GGUFError as e:
                assert str(e).startswith(f"{path}: ")
                outcomes["error"] += 1
    finally:
        os.close(fd)
    assert outcomes["error"] > 1000


# --------------------------------------------------------------------------- corrupt tensor infos


def test_dims_overflow(tiny: Path, tmp_path: Path) -> None:
    at = tensor_info_at(tiny.read_bytes(), "blk.0.attn_q.weight")
    bad = patched(tiny, tmp_path / "ov.gguf", at + 4, "<Q", 2**40)
    bad = patched(bad, bad, at + 12, "<Q", 2**40)
    expect_error(bad, "tensor 'blk.0.attn_q.weight'", "overflow")


def test_dim_negative_as_int64(tiny: Path, tmp_path: Path) -> None:
    at = tensor_info_at(tiny.read_bytes(), "token_embd.weight")
    expect_error(patched(tiny, tmp_path / "neg.gguf", at + 12, "<Q", 2**64 - 1), "invalid dimension")


def test_bytes_overflow(tmp_path: Path) -> None:
    path = tmp_path / "bytes.gguf"
    path.write_bytes(raw_gguf([], [("t", [2**31, 2**31 - 1], 0, 0)]))  # < 2**63 elements, > 2**63 bytes
    expect_error(path, "overflow", "bytes")


def test_too_many_dims(tiny: Path, tmp_path: Path) -> None:
    at = tensor_info_at(tiny.read_bytes(), "token_embd.weight")
    expect_error(patched(tiny, tmp_path / "nd.gguf", at, "<I", 5), "has 5 dimensions (at most 4)")
    expect_error(patched(tiny, tmp_path / "nd.gguf", at, "<I", 2**32 - 1), "dimensions (at most 4)")


def _type_offset(data: bytes, name: str) -> int:
    at = tensor_info_at(data, name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


@pytest.mark.parametrize(
    ("type_id", "fragment"),
    [
        (99, "unknown tensor type 99"),
        (2**31, "unknown tensor type 2147483648"),
        (43, "unknown tensor type 43"),
        (31, "tensor type 31 (Q4_0_4_4), which llama.cpp no longer supports"),
        (4, "(Q4_2)"),
        (12, "of type Q4_K: row of 64 elements is not a multiple of the block size 256"),
    ],
)
def test_bad_tensor_type(tiny: Path, tmp_path: Path, type_id: int, fragment: str) -> None:
    off = _type_offset(tiny.read_bytes(), "blk.0.attn_q.weight")
    expect_error(patched(tiny, tmp_path / "type.gguf", off, "<I", type_id), fragment)


def test_tensor_offset_past_eof(tiny: Path, tmp_path: Path) -> None:
    off = _type_offset(tiny.read_bytes(), "blk.0.attn_k.weight") + 4
    expect_error(patched(tiny, tmp_path / "off.gguf", off, "<Q", 2**40), "past the end of the file")
    expect_error(patched(tiny, tmp_path / "off.gguf", off, "<Q", 2**64 - 1), "past the end of the file")


def test_tensor_offset_out_of_order(tiny: Path, tmp_path: Path) -> None:
    off = _type_offset(tiny.read_bytes(), "blk.0.attn_q.weight") + 4
    expect_error(patched(tiny, tmp_path / "order.gguf", off, "<Q", 0), "has data offset 0, expected 512")
    expect_error(patched(tiny, tmp_path / "order.gguf", off, "<Q", 513), "has data offset 513, expected 512")


def test_tensor_names(tmp_path: Path) -> None:
    path = tmp_path / "names.gguf"
    path.write_bytes(raw_gguf([], [("n" * 64, [4], 0, 0)], data=b"\0" * 16))
    expect_error(path, "name of tensor 0", "exceeds the limit of 63 bytes")
    path.write_bytes(raw_gguf([], [("n" * 63, [4], 0, 0)], data=b"\0" * 16))
    assert check_gguf(path).tensors[0].name == "n" * 63
    path.write_bytes(raw_gguf([], [("a", [4], 0, 0), ("a", [4], 0, 32)], data=b"\0" * 48))
    expect_error(path, "duplicate tensor name 'a'")


# --------------------------------------------------------------------------- split models


def _split3(tmp_path: Path) -> list[Path]:
    write_gguf(tmp_path / "m.gguf", split_max_tensors=1)
    files = sorted(tmp_path.glob("m-*-of-00003.gguf"))
    assert [f.name for f in files] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    return files


def test_split_model(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    info = check_gguf(files[0])
    assert info.split_count == 3
    assert info.split_files == tuple(files)
    assert info.n_layer == 2 and info.n_tensors == 1


def test_split_missing(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    files[2].unlink()
    e = expect_error(files[0], "split 3 of 3 is missing", str(files[2]))
    assert e.path == files[0]
    assert check_gguf(files[0], check_splits=False).split_files == tuple(files)


def test_split_not_first(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    expect_error(files[1], "this is split 2 of 3", "m-00001-of-00003.gguf")


def test_split_renamed(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    renamed = files[0].rename(tmp_path / "model.gguf")
    expect_error(renamed, "does not end with -00001-of-00003.gguf")


def test_split_corrupt_names_the_split(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    os.truncate(files[1], files[1].stat().st_size - 1)
    with pytest.raises(GGUFError, match="truncated") as exc:
        check_gguf(files[0])
    assert str(exc.value).startswith(f"{files[1]}: ") and exc.value.path == files[1]


def test_split_swapped(tmp_path: Path) -> None:
    files = _split3(tmp_path)
    tmp = files[1].with_suffix(".tmp")
    files[1].rename(tmp)
    files[2].rename(files[1])
    tmp.rename(files[2])
    with pytest.raises(GGUFError, match="split.no=2") as exc:
        check_gguf(files[0])
    assert str(exc.value).startswith(f"{files[1]}: expected split 2 of 3 of {files[0]}")


# --------------------------------------------------------------------------- the real bundled model


def test_real_bundled_model_header(tmp_path: Path) -> None:
    """The bundled Qwen2.5-Coder-0.5B header, parsed without assembling the 491 MB file.

    check_gguf reads only the header, so the file here is the first 16 MiB of part 1 (the header is
    ~6 MB) followed by a sparse hole up to the model's real size: the same bytes check_gguf sees in
    the assembled model (tests/test_models.py checks the assembled file itself).
    """
    from radar_gguf import models

    try:
        parts = models.part_paths()
    except models.ModelNotAvailable as e:
        pytest.skip(f"demo model parts not installed (pip install 'radar-gguf[demo]'): {e}")
    path = tmp_path / models.DEFAULT_MODEL_NAME
    with open(parts[0], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(16 << 20))
        dst.truncate(models.DEFAULT_MODEL.size)
    info = check_gguf(path)
    assert info.architecture == "qwen2"
    assert info.n_layer == 24
    assert info.n_head == 14
    assert info.n_head_kv == 2
    assert info.head_dim == 64
    assert info.context_length == 32768
    assert info.n_embd == 896
    assert (info.version, info.n_tensors, info.n_kv) == (3, 291, 26)
    assert info.data_offset < 16 << 20
    assert info.data_offset + info.tensor_data_size == info.file_size == models.DEFAULT_MODEL.size
    assert {t.type_name for t in info.tensors} >= {"Q4_K", "Q6_K", "F32"}
    os.truncate(path, models.DEFAULT_MODEL.size - 1)
    expect_error(path, f"truncated: expected at least {info.file_size} bytes, file has {info.file_size - 1}")
