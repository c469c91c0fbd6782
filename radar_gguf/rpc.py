"""Workers on other processes or hosts: llama.cpp's RPC backend, with Radar running on the workers.

A worker is ggml's ``ggml-rpc-server``, built from the same patched tree into the package and started with
``radar-gguf rpc-server`` (:mod:`radar_gguf.rpc_server`). A client names its workers (``--rpc
host:port,...``, ``load(rpc=[...])``); each worker's devices join ggml's device registry like local GPUs, and
llama.cpp spreads the offloaded layers (``gpu_layers``) over them, with each layer's KV cache and Radar
summaries on the device that runs the layer.

What this module adds to ggml's own client (``ggml_backend_rpc_add_server``), and why it is written here:
ggml aborts the whole process when a worker cannot be reached or speaks another protocol version. So every
worker is probed first, in Python, with the protocol's HELLO message, and a problem becomes an
:class:`RpcError` naming the worker: not listening, not an RPC worker, busy with another client, or built
without the Radar ops (its op numbering would differ and the graph it ran would be wrong, so the patched
protocol refuses any version but its own).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

# the patched ggml-rpc.h: RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION (the patch version is GGML_OP_COUNT with Radar)
PROTO_VERSION = (7, 1, 103)
DEFAULT_PORT = 50052  # ggml-rpc-server's default
PROBE_TIMEOUT_S = 10.0
# how long a worker may take to answer (a graph it computes included) before it counts as lost, as a closed
# connection does; ggml's client waits forever without it (GGML_RPC_TIMEOUT, read when it connects)
ANSWER_TIMEOUT_S = 300.0
TIMEOUT_ENV = "GGML_RPC_TIMEOUT"
WORKER_ENV = "RADAR_GGUF_RPC_SERVER"  # path of a ggml-rpc-server to run instead of the package's

_CMD_HELLO = 14
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE
_HELLO_RSP = struct.Struct("<BBBB24s")  # major, minor, patch, padding, conn_caps

_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}  # enum ggml_backend_dev_type

Endpoints = Union[str, Sequence[str]]


class RpcError(RuntimeError):
    """A worker that cannot be used: the message names it and says why."""


def parse_endpoints(spec: Endpoints) -> list[str]:
    """``"h1:50052,h2:50052"`` (or a list of such) as a list of ``host:port``; a bad one is a ValueError."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise ValueError(f"rpc: expected host:port strings, got {raw!r}")
        item = raw.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rpc: expected host:port (e.g. 192.168.1.7:{DEFAULT_PORT}), got {item!r}")
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("rpc: no workers given")
    return out


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, int, int]:
    """The protocol version of the worker at ``endpoint``, after checking that this library can use it.

    Raises RpcError when nothing listens there, when it is not a ggml RPC worker, when it does not answer
    within ``timeout`` seconds (a worker serves one client at a time), or when its version is not ours.
    """
    host, port = _split(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RpcError(
            f"rpc worker {endpoint}: cannot connect ({reason}); start one there with "
            f"`radar-gguf rpc-server --host HOST --port {port}`"
        ) from None
    try:
        with sock:
            sock.sendall(bytes([_CMD_HELLO]) + struct.pack("<Q", _CAPS_SIZE) + bytes(_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
            if size != _HELLO_RSP.size:
                raise ValueError(size)
            major, minor, patch, _, _ = _HELLO_RSP.unpack(_recv_exact(sock, size))
    except socket.timeout:
        raise RpcError(
            f"rpc worker {endpoint}: no answer within {timeout:g} s (a worker serves one client at a time: "
            "is another one connected?)"
        ) from None
    except (OSError, ValueError, struct.error):
        raise RpcError(
            f"rpc worker {endpoint}: the program listening there is not a ggml RPC worker"
        ) from None
    if (major, minor, patch) != PROTO_VERSION:
        want = ".".join(map(str, PROTO_VERSION))
        raise RpcError(
            f"rpc worker {endpoint}: it speaks RPC protocol {major}.{minor}.{patch}, this library {want} with "
            "the Radar ops; run the worker of this package there (`radar-gguf rpc-server`), not another "
            "build's rpc-server"
        )
    return major, minor, patch


_lock = threading.Lock()
_added: list[str] = []
_in_use: dict[str, int] = {}  # endpoint -> models of this process that hold a connection to it


def answer_timeout(seconds: Optional[float] = None) -> float:
    """The answer timeout to use: ``seconds`` if given, else ``GGML_RPC_TIMEOUT`` if set, else
    :data:`ANSWER_TIMEOUT_S`; 0 waits forever. A negative or unreadable value is a ValueError."""
    if seconds is None:
        text = os.environ.get(TIMEOUT_ENV, "")
        try:
            seconds = float(text) if text.strip() else ANSWER_TIMEOUT_S
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected seconds (0: wait forever)") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"rpc timeout: expected seconds >= 0 (0: wait forever), got {seconds!r}")
    return float(seconds)


def add_workers(
    spec: Endpoints, timeout: float = PROBE_TIMEOUT_S, answer_timeout_s: Optional[float] = None
) -> list[str]:
    """Probe the workers and add their devices to ggml's registry (once per worker and process).

    After this, a model loaded with ``gpu_layers`` != 0 places layers on these workers, as llama.cpp's
    ``--rpc`` does. Workers stay added for the life of the process (ggml has no way to remove them). A
    worker is probed at every call unless a model of this process holds its connection (a worker serves
    one client at a time: the probe would wait behind our own connection). ``answer_timeout_s`` (see
    :func:`answer_timeout`) is the timeout of a worker added here; one added before keeps its own.
    """
    from . import _lib

    endpoints = parse_endpoints(spec)
    wait = answer_timeout(answer_timeout_s)
    lib = _lib.ggml_rpc()
    with _lock:
        for ep in endpoints:
            if not _in_use.get(ep):
                probe(ep, timeout)
            if ep in _added:
                continue
            # patch 0007 reads the timeout from the environment in add_server and keeps it for the worker
            before = os.environ.get(TIMEOUT_ENV)
            os.environ[TIMEOUT_ENV] = f"{wait:g}"
            try:
                reg = lib.add_server(ep.encode())
            finally:
                if before is None:
                    del os.environ[TIMEOUT_ENV]
                else:
                    os.environ[TIMEOUT_ENV] = before
            if not reg:
                raise RpcError(f"rpc worker {ep}: it reports no device")
            lib.register(reg)
            _added.append(ep)
    return endpoints


def hold(endpoints: Sequence[str]) -> None:
    """A model of this process now holds connections to these workers (until :func:`release`)."""
    with _lock:
        for ep in endpoints:
            _in_use[ep] = _in_use.get(ep, 0) + 1


def release(endpoints: Sequence[str]) -> None:
    with _lock:
        for ep in endpoints:
            _in_use[ep] = max(0, _in_use.get(ep, 0) - 1)


def take_error() -> str:
    """Why a worker was lost since the last call ("connection to the RPC server HOST:PORT lost"), or ""."""
    from . import _lib

    buf = ctypes.create_string_buffer(512)
    n = _lib.ggml_rpc().take_error(buf, len(buf))
    return buf.value.decode(errors="replace") if n else ""


def find_worker() -> Path:
    """The ggml-rpc-server to run: $RADAR_GGUF_RPC_SERVER, else next to $LLAMA_CPP_LIB_PATH's libraries
    (a development build), else the package's ``llama_cpp/bin/ggml-rpc-server``."""
    from ._lib import bundled_program

    found, cands = bundled_program("ggml-rpc-server", WORKER_ENV)
    if found:
        return Path(found)
    where = ", ".join(cands) or "the llama_cpp package (not importable)"
    raise RpcError(
        f"ggml-rpc-server was not found ({where}). It is built into the package by `pip install .` "
        f"(unless -DRADAR_RPC=OFF); reinstall, or point {WORKER_ENV} at one built from the patched tree."
    )


def remote_device_types() -> dict[str, str]:
    """For each RPC device in ggml's registry, the kind of device behind it on its worker (``"CPU"``, ``"GPU"``...)."""
    from . import _lib

    lib = _lib.ggml_rpc()
    g = _lib._ggml()
    out: dict[str, str] = {}
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        if g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)) == b"RPC":
            t = lib.remote_type(dev)
            out[g.ggml_backend_dev_description(dev).decode()] = _DEV_TYPES.get(t, str(t))
    return out
