"""Validate a GGUF file before llama.cpp opens it.

:func:`check_gguf` parses the GGUF header (v2/v3, little-endian) with :mod:`struct`: the key/value
metadata and the tensor infos, seeking over large arrays and never reading tensor data. Anything
that would make llama.cpp fail, abort or attempt a huge allocation raises :class:`GGUFError`, a
``ValueError`` whose message starts with the file's path: a missing file or a folder, a file that is
not GGUF, an unsupported version, absurd counts or lengths, bad tensor shapes or types, tensor data
past the end of the file, a truncated file, a missing split. On success it returns a
:class:`GGUFInfo` with the model's shape as llama.cpp will read it.

The rules follow the pinned llama.cpp (ggml 0.25.3) ``gguf.cpp`` and ``llama-model-loader.cpp``;
the type table below is ``ggml_blck_size``/``ggml_type_size`` of that ggml.

Why over 600 lines: one rule per way a file makes llama.cpp crash (each found by fuzzing, see
docs/reliability.md), kept together so the reader sees every check a file passes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional, Union

__all__ = [
    "GGML_TYPES",
    "GGUFError",
    "GGUFInfo",
    "TensorInfo",
    "check_gguf",
    "tensor_nbytes",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_DIMS = 4
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (llama-hparams.h)
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) including the terminating NUL
MAX_KEY_LENGTH = 65535  # GGUF spec: keys are at most 2**16 - 1 bytes
DEFAULT_ALIGNMENT = 32
INT64_MAX = 2**63 - 1
_CHUNK = 64 << 10
_MAX_KEPT_STRING = 1 << 20

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}
# ids that once existed and that llama.cpp now rejects
_REMOVED_TYPES = {
    4: "Q4_2",
    5: "Q4_3",
    31: "Q4_0_4_4",
    32: "Q4_0_4_8",
    33: "Q4_0_8_8",
    36: "IQ4_NL_4_4",
    37: "IQ4_NL_4_8",
    38: "IQ4_NL_8_8",
}

# GGUF metadata value types
_T_STRING, _T_ARRAY = 8, 9
_SCALARS: dict[int, tuple[str, struct.Struct]] = {
    0: ("u8", struct.Struct("<B")),
    1: ("i8", struct.Struct("<b")),
    2: ("u16", struct.Struct("<H")),
    3: ("i16", struct.Struct("<h")),
    4: ("u32", struct.Struct("<I")),
    5: ("i32", struct.Struct("<i")),
    6: ("f32", struct.Struct("<f")),
    7: ("bool", struct.Struct("<B")),
    10: ("u64", struct.Struct("<Q")),
    11: ("i64", struct.Struct("<q")),
    12: ("f64", struct.Struct("<d")),
}
_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

TOKENS_KEY = "tokenizer.ggml.tokens"
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

PathLike = Union[str, "os.PathLike[str]"]


class GGUFError(ValueError):
    """A GGUF file that llama.cpp must not be given. ``str()`` starts with the path."""

    def __init__(self, path: PathLike, message: str) -> None:
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{os.fspath(path)}: {message}")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor info record of the header."""

    name: str
    shape: tuple[int, ...]
    """``ne[0..n_dims)``, innermost (row) dimension first, as ggml stores it."""
    type_id: int
    type_name: str
    offset: int
    """Offset of the tensor's data from the start of the data section."""
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What :func:`check_gguf` learnt from a valid GGUF header.

    Model fields are ``None`` when the key is absent. ``n_head``/``n_head_kv`` that are per-layer
    arrays give their largest value; ``n_head_kv`` defaults to ``n_head`` as in llama.cpp;
    ``head_dim`` is ``{arch}.attention.key_length`` or else ``n_embd // n_head``.
    """

    path: Path
    version: int
    n_tensors: int
    n_kv: int
    architecture: Optional[str]
    context_length: Optional[int]
    n_layer: Optional[int]
    n_head: Optional[int]
    n_head_kv: Optional[int]
    head_dim: Optional[int]
    n_embd: Optional[int]
    file_size: int
    name: Optional[str] = None
    """``general.name``."""
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    """Where the tensor data section starts in this file."""
    tensor_data_size: int = 0
    """Bytes of tensor data in this file (without the padding after the last tensor)."""
    split_count: int = 1
    split_files: tuple[Path, ...] = ()
    """All split files in order (first one included) when ``split.count`` > 1, else empty."""
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Size in bytes of a tensor of ggml type ``type_id`` and shape ``ne`` (row dimension first).

    Raises ``KeyError`` for a type id this table does not know and ``ValueError`` when the row
    length is not a multiple of the type's block size.
    """
    _, block, type_size = GGML_TYPES[type_id]
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise ValueError(f"row of {ne0} elements is not a multiple of the block size {block}")
    rows = 1
    for d in shape[1:]:
        rows *= d
    return ne0 // block * type_size * rows


class _Reader:
    """Sequential little-endian reader over a file with a small read-ahead buffer.

    Every read is checked against the file size first, so a short file gives a ``truncated``
    :class:`GGUFError`, never a short read or a huge allocation.
    """

    def __init__(self, f: BinaryIO, path: PathLike, size: int) -> None:
        self.f = f
        self.path = path
        self.size = size
        self.pos = 0
        self.buf = b""
        self.buf_start = 0
        self.vocab: Optional[set[bytes]] = None  # token texts, once tokenizer.ggml.tokens is read

    def error(self, message: str) -> GGUFError:
        return GGUFError(self.path, message)

    def truncated(self, needed: int) -> GGUFError:
        return self.error(f"truncated: expected at least {needed} bytes, file has {self.size}")

    def _fill(self, n: int) -> int:
        """Make ``[pos, pos+n)`` available in ``buf``; return its offset in ``buf``."""
        if self.pos + n > self.size:
            raise self.truncated(self.pos + n)
        off = self.pos - self.buf_start
        if 0 <= off and off + n <= len(self.buf):
            return off
        self.f.seek(self.pos)
        self.buf = self.f.read(max(n, _CHUNK))
        self.buf_start = self.pos
        if len(self.buf) < n:  # the file shrank while we read it
            raise self.truncated(self.pos + n)
        return 0

    def unpack(self, st: struct.Struct) -> tuple:
        off = self._fill(st.size)
        self.pos += st.size
        return st.unpack_from(self.buf, off)

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def read(self, n: int) -> bytes:
        off = self._fill(n)
        self.pos += n
        return self.buf[off : off + n]

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise self.truncated(self.pos + n)
        self.pos += n

    def string_length(self, what: str) -> int:
        at = self.pos
        n = self.u64()
        if n > self.size:
            raise self.error(
                f"{what}: string length {n} at offset {at} is beyond the file size ({self.size} bytes): "
                "corrupt or truncated file"
            )
        return n

    def string(self, what: str, limit: Optional[int] = None) -> str:
        at = self.pos
        n = self.string_length(what)
        if limit is not None and n > limit:
            raise self.error(f"{what}: string length {n} at offset {at} exceeds the limit of {limit} bytes")
        return self.read(n).decode("utf-8", errors="replace")

    def strings(self, count: int, what: str) -> list[bytes]:
        """Read ``count`` length-prefixed strings (the hot loop for a vocabulary's token texts)."""
        return self._strings(count, what, keep=True)

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings (the hot loop for tokenizer vocabularies)."""
        self._strings(count, what, keep=False)

    def _strings(self, count: int, what: str, keep: bool) -> list[bytes]:
        size = self.size
        unpack_from = _U64.unpack_from
        out = []
        buf, start = self.buf, self.buf_start
        off = self.pos - start
        for _ in range(count):
            if off < 0 or off + 8 > len(buf):
                self.pos = start + off
                off = self._fill(8)
                buf, start = self.buf, self.buf_start
            n = unpack_from(buf, off)[0]
            if n > size:
                self.pos = start + off
                self.string_length(what)  # raises with the offset
            if keep:
                if off + 8 + n > len(buf):
                    self.pos = start + off + 8
                    out.append(self.read(n))
                    buf, start = self.buf, self.buf_start
                    off = self.pos - start
                    continue
                out.append(buf[off + 8 : off + 8 + n])
            off += 8 + n
        self.pos = start + off
        if self.pos > size:
            raise self.truncated(self.pos)
        return out


def _type_name(t: int) -> str:
    if t == _T_STRING:
        return "string"
    if t == _T_ARRAY:
        return "array"
    return _SCALARS[t][0] if t in _SCALARS else f"unknown type {t}"


def _read_value(r: _Reader, key: str, vtype: int, keep: bool) -> object:
    """Read (``keep``) or skip one metadata value of type ``vtype``; arrays come back as lists."""
    if vtype in _SCALARS:
        return r.unpack(_SCALARS[vtype][1])[0]
    if vtype == _T_STRING:
        n = r.string_length(f"value of key '{key}'")
        if keep and n <= _MAX_KEPT_STRING:
            return r.read(n).decode("utf-8", errors="replace")
        r.skip(n)
        return None
    if vtype == _T_ARRAY:
        at = r.pos
        etype = r.u32()
        count = r.u64()
        if etype == _T_ARRAY:
            raise r.error(f"key '{key}': nested arrays are not supported by llama.cpp")
        if etype == _T_STRING:
            esize = 8  # at least the length prefix of each string
        elif etype in _SCALARS:
            esize = _SCALARS[etype][1].size
        else:
            raise r.error(f"key '{key}': array of unknown value type {etype}")
        if count * esize > r.size:
            raise r.error(
                f"key '{key}': array length {count} at offset {at} is beyond the file size "
                f"({r.size} bytes): corrupt or truncated file"
            )
        if keep and etype in _INT_TYPES and count <= 4096:
            st = _SCALARS[etype][1]
            return [r.unpack(st)[0] for _ in range(count)]
        if etype == _T_STRING and key == TOKENS_KEY:
            r.vocab = _check_vocabulary(r, r.strings(count, f"array '{key}'"))
            return None
        if etype == _T_STRING:
            r.skip_strings(count, f"array '{key}'")
        else:
            r.skip(count * esize)
        return None
    raise r.error(f"key '{key}' has unknown value type {vtype}")


def _check_vocabulary(r: _Reader, tokens: list[bytes]) -> set[bytes]:
    """llama.cpp aborts (GGML_ASSERT in llama_vocab::load) when two tokens have the same text; it reads
    each token as a C string (up to its first NUL) and names an empty one ``[EMPTY_<id>]``. Returns
    the set of token texts."""
    seen: dict[bytes, int] = {}
    for i, raw in enumerate(tokens):
        word = raw.split(b"\0", 1)[0] or f"[EMPTY_{i}]".encode()
        j = seen.setdefault(word, i)
        if j != i:
            raise r.error(
                f"tokens {j} and {i} of {TOKENS_KEY} are the same text {word[:40]!r}: corrupt vocabulary "
                "(llama.cpp would abort)"
            )
    return set(seen)


def _check_byte_tokens(r: _Reader, kv: dict[str, tuple[int, object]]) -> None:
    """A SentencePiece vocabulary must hold a token for every byte (``<0xXX>``, or the byte itself):
    llama.cpp falls back to them for text outside the vocabulary and aborts (std::out_of_range, an
    uncaught exception) when one is missing."""
    model = kv.get("tokenizer.ggml.model", (None, None))[1]
    if model not in ("llama", "t5") or r.vocab is None:
        return
    missing = [
        b
        for b in range(256)
        if f"<0x{b:02X}>".encode() not in r.vocab and (b == 0 or bytes([b]) not in r.vocab)
    ]
    if missing:
        raise r.error(
            f"the SentencePiece vocabulary lacks the byte token <0x{missing[0]:02X}> "
            f"({len(missing)} of 256 missing): corrupt vocabulary (llama.cpp would abort on some text)"
        )


def _wanted(key: str) -> bool:
    """Keys whose values we keep (all others are skipped without decoding)."""
    return (
        key.startswith(("general.", "split."))
        or key == "tokenizer.ggml.model"
        or key.endswith(
            (
                ".context_length",
                ".block_count",
                ".embedding_length",
                ".head_count",
                ".head_count_kv",
                ".key_length",
                ".expert_count",
                ".expert_used_count",
                ".nextn_predict_layers",
            )
        )
    )


def _parse(path: PathLike) -> tuple[GGUFInfo, dict[str, tuple[int, object]]]:
    """Parse and validate one GGUF file; return its info and the kept metadata (type, value)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise GGUFError(path, "is a directory, not a GGUF file")
        f = open(p, "rb")
    except GGUFError:
        raise
    except FileNotFoundError:
        raise GGUFError(path, "no such file") from None
    except PermissionError:
        raise GGUFError(path, "permission denied") from None
    except OSError as e:
        raise GGUFError(path, f"cannot open: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        r = _Reader(f, path, size)
        try:
            return _parse_open(r)
        except OSError as e:
            raise GGUFError(path, f"read error: {e.strerror or e}") from None


def _check_magic(r: _Reader) -> None:
    if r.size < 4:
        raise r.error(f"not a GGUF file (truncated: expected at least 4 bytes, file has {r.size})")
    magic = r.read(4)
    if magic == GGUF_MAGIC:
        return
    hint = ""
    if magic in (b"lmgg", b"fmgg", b"tjgg", b"GGML", b"GGMF", b"GGJT"):
        hint = "; it is an old GGML/GGJT model: convert it to GGUF"
    elif magic == b"vers":
        hint = "; it looks like a Git LFS pointer, not the model itself"
    elif magic[:1] == b"<" or magic[:1] == b"{":
        hint = "; it looks like an HTML/JSON page, perhaps a failed download"
    elif magic[:2] == b"PK":
        hint = "; it looks like a zip (PyTorch) checkpoint"
    raise r.error(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}){hint}")


def _parse_open(r: _Reader) -> tuple[GGUFInfo, dict[str, tuple[int, object]]]:
    _check_magic(r)
    version = r.u32()
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise r.error("GGUF version 1 is no longer supported by llama.cpp: reconvert the model")
        if version > 0xFFFF and version & 0xFFFF == 0:
            raise r.error(f"unsupported GGUF version {version}: the file looks big-endian")
        raise r.error(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.u64()
    if n_tensors > MAX_TENSORS:
        raise r.error(f"absurd tensor count {n_tensors} (more than {MAX_TENSORS:,}): corrupt header")
    n_kv = r.u64()
    if n_kv > MAX_KV:
        raise r.error(f"absurd metadata count {n_kv} (more than {MAX_KV:,}): corrupt header")

    kv: dict[str, tuple[int, object]] = {}
    seen: set[str] = set()
    for i in range(n_kv):
        key = r.string(f"key {i}", limit=MAX_KEY_LENGTH)
        if not key:
            raise r.error(f"key {i} is empty")
        if key in seen:
            raise r.error(f"duplicate key '{key}'")
        seen.add(key)
        vtype = r.u32()
        keep = _wanted(key)
        value = _read_value(r, key, vtype, keep)
        if keep:
            kv[key] = (vtype, value)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        atype, aval = kv["general.alignment"]
        if atype != 4:
            raise r.error(f"key 'general.alignment' must be of type u32 but is {_type_name(atype)}")
        alignment = int(aval)  # type: ignore[call-overload]
        if alignment == 0 or alignment & (alignment - 1):
            raise r.error(f"general.alignment {alignment} is not a power of 2")

    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.string(f"name of tensor {i}", limit=MAX_TENSOR_NAME)
        if name in names:
            raise r.error(f"duplicate tensor name '{name}'")
        names.add(name)
        n_dims = r.u32()
        if n_dims > MAX_DIMS:
            raise r.error(f"tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(r.u64() for _ in range(n_dims))
        type_id = r.u32()
        offset = r.u64()
        raw.append((name, shape, type_id, offset))
    _check_byte_tokens(r, kv)
    header_end = r.pos
    data_offset = header_end
    if n_tensors:
        data_offset = -(-header_end // alignment) * alignment
        if data_offset > r.size:
            raise r.truncated(data_offset)

    tensors: list[TensorInfo] = []
    expected = 0  # llama.cpp requires tensors in order, each aligned, without gaps
    for name, shape, type_id, offset in raw:
        for d in shape:
            if d > INT64_MAX:
                raise r.error(f"tensor '{name}' has an invalid dimension {d} (negative as int64)")
        nelements = 1
        for d in shape:
            nelements *= d
        if nelements > INT64_MAX:
            raise r.error(f"tensor '{name}' dimensions {list(shape)} overflow: {nelements} elements")
        if type_id in _REMOVED_TYPES:
            raise r.error(
                f"tensor '{name}' has tensor type {type_id} ({_REMOVED_TYPES[type_id]}), "
                "which llama.cpp no longer supports: requantize the model"
            )
        if type_id not in GGML_TYPES:
            raise r.error(f"tensor '{name}' has unknown tensor type {type_id}")
        type_name, block, _ = GGML_TYPES[type_id]
        try:
            nbytes = tensor_nbytes(type_id, shape)
        except ValueError as e:
            raise r.error(f"tensor '{name}' of type {type_name}: {e}") from None
        if nbytes > INT64_MAX:
            raise r.error(f"tensor '{name}' dimensions {list(shape)} overflow: {nbytes} bytes")
        start = data_offset + offset
        end = start + nbytes
        if offset != expected:
            if start >= r.size:
                raise r.error(
                    f"tensor '{name}' data offset {offset} (file offset {start}) is past the end of "
                    f"the file ({r.size} bytes)"
                )
            raise r.error(
                f"tensor '{name}' has data offset {offset}, expected {expected} "
                f"(tensor data must follow in order, aligned to {alignment})"
            )
        if end > r.size:
            raise r.error(
                f"truncated: expected at least {end} bytes, file has {r.size} "
                f"(data of tensor '{name}' extends past the end of the file)"
            )
        tensors.append(TensorInfo(name, shape, type_id, type_name, offset, nbytes))
        expected = offset + -(-nbytes // alignment) * alignment
    tensor_data_size = (tensors[-1].offset + tensors[-1].nbytes) if tensors else 0

    info = _model_info(
        r,
        kv,
        version=version,
        n_tensors=n_tensors,
        n_kv=n_kv,
        alignment=alignment,
        data_offset=data_offset,
        tensor_data_size=tensor_data_size,
        tensors=tuple(tensors),
    )
    return info, kv


def _get_int(
    r: _Reader, kv: dict[str, tuple[int, object]], key: str, allow_array: bool = False
) -> Optional[int]:
    if key not in kv:
        return None
    vtype, value = kv[key]
    if vtype in _INT_TYPES:
        return int(value)  # type: ignore[call-overload]
    if allow_array and vtype == _T_ARRAY and isinstance(value, list) and value:
        return max(int(v) for v in value)
    raise r.error(f"key '{key}' has type {_type_name(vtype)}, expected an integer")


def _check_hparams(r: _Reader, kv: dict[str, tuple[int, object]], arch: str, n_layer: Optional[int]) -> None:
    """Hyperparameters that llama.cpp checks with GGML_ASSERT (an abort, not an error) in load_hparams."""
    if n_layer is not None and not 0 < n_layer <= MAX_LAYERS:
        raise r.error(
            f"{arch}.block_count is {n_layer}: llama.cpp supports 1 to {MAX_LAYERS} layers (corrupt header?)"
        )
    nextn = _get_int(r, kv, f"{arch}.nextn_predict_layers")
    if nextn is not None and n_layer is not None and nextn > n_layer:
        raise r.error(f"{arch}.nextn_predict_layers is {nextn}, more than the {n_layer} layers")
    n_expert = _get_int(r, kv, f"{arch}.expert_count")
    if n_expert is not None and n_expert > MAX_EXPERTS:
        raise r.error(f"{arch}.expert_count is {n_expert}: llama.cpp supports at most {MAX_EXPERTS} experts")
    n_used = _get_int(r, kv, f"{arch}.expert_used_count", allow_array=True)
    if n_used is not None and n_used > (n_expert or 0):
        raise r.error(f"{arch}.expert_used_count is {n_used}, more than the {n_expert or 0} experts")


def _model_info(r: _Reader, kv: dict[str, tuple[int, object]], **fields: object) -> GGUFInfo:
    arch: Optional[str] = None
    if "general.architecture" in kv:
        atype, aval = kv["general.architecture"]
        if atype != _T_STRING:
            raise r.error(f"key 'general.architecture' has type {_type_name(atype)}, expected a string")
        arch = str(aval)
    name = kv.get("general.name", (None, None))[1]
    ctx = n_layer = n_head = n_head_kv = key_length = n_embd = None
    if arch:
        ctx = _get_int(r, kv, f"{arch}.context_length")
        n_layer = _get_int(r, kv, f"{arch}.block_count")
        n_embd = _get_int(r, kv, f"{arch}.embedding_length")
        n_head = _get_int(r, kv, f"{arch}.attention.head_count", allow_array=True)
        n_head_kv = _get_int(r, kv, f"{arch}.attention.head_count_kv", allow_array=True)
        key_length = _get_int(r, kv, f"{arch}.attention.key_length")
        _check_hparams(r, kv, arch, n_layer)
    if n_head_kv is None:
        n_head_kv = n_head
    head_dim = key_length
    if head_dim is None and n_embd is not None and n_head:
        head_dim = n_embd // n_head
    split_count = _get_int(r, kv, "split.count") or 1
    return GGUFInfo(
        path=Path(r.path),
        architecture=arch,
        context_length=ctx,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_embd=n_embd,
        file_size=r.size,
        name=name if isinstance(name, str) else None,
        split_count=split_count,
        **fields,  # type: ignore[arg-type]
    )


def _split_files(info: GGUFInfo, kv: dict[str, tuple[int, object]], path: PathLike) -> tuple[Path, ...]:
    """Names of all splits, derived from the first one as llama.cpp does."""
    count = info.split_count
    r_no = kv.get("split.no", (None, 0))
    split_no = int(r_no[1]) if r_no[0] in _INT_TYPES else 0  # type: ignore[call-overload]
    p = Path(path)
    m = _SPLIT_RE.match(p.name)
    if split_no != 0:
        first = f"{m.group('prefix')}-00001-of-{count:05d}.gguf" if m else "the -00001-of- file"
        raise GGUFError(path, f"this is split {split_no + 1} of {count}; open the first split ({first})")
    if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
        raise GGUFError(
            path, f"split.count is {count} but the file name does not end with -00001-of-{count:05d}.gguf"
        )
    return tuple(p.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1))


def check_gguf(path: PathLike, *, check_splits: bool = True) -> GGUFInfo:
    """Validate the GGUF file at ``path`` and return what its header says.

    Reads only the header (seeking over large arrays; tensor data is never read). Raises
    :class:`GGUFError` naming the file for anything that would make llama.cpp fail or crash. For a
    model split into several files (``split.count`` > 1) ``path`` must be the first split; the
    others are listed in ``split_files`` and, with ``check_splits``, must exist and are validated
    too (a bad split raises an error naming that split).
    """
    info, kv = _parse(path)
    if info.split_count <= 1:
        return info
    files = _split_files(info, kv, path)
    if check_splits:
        for i, split in enumerate(files[1:], 2):
            if not split.exists():
                raise GGUFError(path, f"split {i} of {info.split_count} is missing: {split}")
            sinfo, skv = _parse(split)
            no = skv.get("split.no", (None, None))
            if sinfo.split_count != info.split_count or no[0] not in _INT_TYPES or no[1] != i - 1:
                raise GGUFError(
                    split,
                    f"expected split {i} of {info.split_count} of {os.fspath(path)}, "
                    f"header says split.no={no[1]} split.count={sinfo.split_count}",
                )
    return dataclasses.replace(info, split_files=files)
