"""Conversation files: a chat's history with the context that holds it (KV cache), saved and resumed
without re-reading the conversation (the REPL's ``/save`` and ``/load``, or the API)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import time
from pathlib import Path

from .sizes import format_size

# -- conversation files (/save, /load) -----------------------------------------------------------
#
# Layout: 8-byte magic, u32 format version, u64 header length, the header (UTF-8 JSON: model identity,
# context size, history, token count, state size and checksum), the context's token ids (int32
# little-endian), then llama.cpp's context state (llama_state_get_data: KV cache and last logits).
# No pickle: loading a file never runs code from it.

SESSION_MAGIC = b"RGGUFSES"
SESSION_VERSION = 1
_SESSION_PREFIX = struct.Struct("<8sIQ")
_MAX_HEADER = 64 << 20


class SessionError(ValueError):
    """A conversation file that cannot be saved or loaded here; the message says why."""


def model_fingerprint(path: Path) -> dict:
    """Identity of a GGUF file: its name, size and the sha256 of its first 4 MiB (header and metadata)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
    return {"file": path.name, "size": path.stat().st_size, "sha256_head": h.hexdigest()}


def _target_path(path: os.PathLike) -> Path:
    """``path`` as a file to write; SessionError (nothing written) for an empty path, a directory, or a
    folder that does not exist or cannot be written."""
    if not os.fspath(path).strip():
        raise SessionError("no file name given")
    path = Path(path).expanduser()
    if path.is_dir():
        raise SessionError(f"{path} is a directory; give a file name, e.g. {path / 'chat.session'}")
    if not path.name or path.name in (".", ".."):
        raise SessionError(f"{path} is not a file name")
    parent = path.parent
    if not parent.is_dir():
        raise SessionError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SessionError(f"cannot write {path}: the folder {parent} is not writable")
    return path


def save_session(model, path: os.PathLike, history: list) -> dict:
    """Write the conversation ``history`` and the context holding it (KV cache included) to ``path``.

    Raises SessionError (nothing written, the model untouched) if ``path`` cannot be written."""
    from . import __version__, _lib

    path = _target_path(path)
    C = _lib.bindings().llama_cpp
    with model.exclusive("save_session"):  # a consistent snapshot: no other thread decodes meanwhile
        llama = model.llama
        n_tokens = int(llama.n_tokens)
        size = int(C.llama_state_get_size(llama.ctx))
        buf = (ctypes.c_uint8 * size)()
        n_bytes = int(C.llama_state_get_data(llama.ctx, buf, size))
        if n_bytes > size:
            raise SessionError("llama.cpp returned more state than it announced; not saved")
        state = memoryview(buf).cast("B")[:n_bytes]
        tokens = llama.input_ids[:n_tokens].astype("<i4").tobytes()
    header = {
        "format": "radar_gguf conversation",
        "radar_gguf": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": _fingerprint(model.path),
        "ctx": model.ctx,
        "n_tokens": n_tokens,
        "state_bytes": n_bytes,
        "state_sha256": hashlib.sha256(state).hexdigest(),
        "radar": model.radar.describe(),
        "history": list(history),
    }
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_SESSION_PREFIX.pack(SESSION_MAGIC, SESSION_VERSION, len(head)))
            f.write(head)
            f.write(tokens)
            f.write(state)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SessionError(f"cannot write {path}: {e.strerror or e}") from None
    return header


def _fingerprint(path: Path) -> dict:
    try:
        return model_fingerprint(path)
    except OSError as e:
        raise SessionError(f"cannot read the model file {path}: {e.strerror or e}") from None


def read_session_header(path: os.PathLike) -> tuple[dict, int]:
    """The header of a conversation file and the offset of its token ids; SessionError if it is not one."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            prefix = f.read(_SESSION_PREFIX.size)
            if len(prefix) < _SESSION_PREFIX.size or not prefix.startswith(SESSION_MAGIC):
                raise SessionError(f"{path} is not a radar_gguf conversation file (saved with /save)")
            _, version, n_head = _SESSION_PREFIX.unpack(prefix)
            if version != SESSION_VERSION:
                raise SessionError(
                    f"{path} is a version {version} conversation file; this radar_gguf reads "
                    f"version {SESSION_VERSION}"
                )
            if n_head > _MAX_HEADER:
                raise SessionError(f"{path} is damaged (header of {n_head} bytes)")
            raw = f.read(n_head)
    except FileNotFoundError:
        raise SessionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SessionError(f"{path} is a directory") from None
    except OSError as e:
        raise SessionError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        _ = (
            header["model"]["sha256_head"],
            int(header["ctx"]),
            int(header["n_tokens"]),
            int(header["state_bytes"]),
            list(header["history"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise SessionError(f"{path} is damaged (unreadable header)") from None
    return header, _SESSION_PREFIX.size + n_head


def load_session(model, path: os.PathLike) -> list:
    """Restore a conversation saved by :func:`save_session` into ``model``'s context; return its history.

    Refuses (SessionError) a file saved with another model or context size; the context is left as
    it was in that case. A damaged file leaves the context empty.
    """
    import numpy as np

    from . import _lib

    if not os.fspath(path).strip():
        raise SessionError("no file name given")
    path = Path(path).expanduser()
    header, offset = read_session_header(path)
    saved, here = header["model"], _fingerprint(model.path)
    if (saved.get("size"), saved.get("sha256_head")) != (here["size"], here["sha256_head"]):
        raise SessionError(
            f"{path} was saved with the model {saved.get('file')} ({saved.get('size')} bytes); "
            f"this chat runs {here['file']} ({here['size']} bytes). Load it with that model."
        )
    if int(header["ctx"]) != model.ctx:
        raise SessionError(
            f"{path} was saved with a {format_size(int(header['ctx']))} context; this chat has "
            f"{format_size(model.ctx)}. Restart with --ctx {format_size(int(header['ctx']))}."
        )
    n_tokens, n_bytes = int(header["n_tokens"]), int(header["state_bytes"])
    if not 0 <= n_tokens <= model.ctx:
        raise SessionError(f"{path} is damaged ({n_tokens} tokens in a {model.ctx}-token context)")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            tokens = np.frombuffer(f.read(4 * n_tokens), dtype="<i4")
            state = bytearray(n_bytes)
            got = f.readinto(state)
    except (OSError, MemoryError) as e:
        raise SessionError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(tokens) != n_tokens or got != n_bytes:
        raise SessionError(f"{path} is truncated")
    if hashlib.sha256(state).hexdigest() != header.get("state_sha256"):
        raise SessionError(f"{path} is damaged (state checksum mismatch)")

    C = _lib.bindings().llama_cpp
    with model.exclusive("load_session"):
        llama = model.llama
        model.reset()
        buf = (ctypes.c_uint8 * n_bytes).from_buffer(state)
        if int(C.llama_state_set_data(llama.ctx, buf, n_bytes)) != n_bytes:
            model.reset()
            raise SessionError(
                f"llama.cpp could not restore the context from {path}; the context is now empty"
            )
        llama.input_ids[:n_tokens] = tokens
        llama.n_tokens = n_tokens
    return [dict(m) for m in header["history"]]
