"""Queries and keys of every layer, read from llama.cpp's decode graph while a model decodes.

The ``radar_attn-<il>`` node of each layer is caught through the scheduler's ``cb_eval`` callback and its
inputs (query, K and V views, the mask, the segment summaries, the kernel's selection and output) are
copied into NumPy. ``capture_decode`` drives a model: a cached dense prefill, then decode steps with
Radar on, capturing every ``stride``-th one.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..config import RadarConfig
from .context import prefill_cached
from .records import log

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_I32 = 0, 1, 26
_NP_TYPES = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16, GGML_TYPE_I32: np.int32}


# -- capture: ggml tensors of the decode graph -----------------------------------------------------------
class ggml_tensor(ctypes.Structure):
    pass


# struct ggml_tensor (ggml/include/ggml.h; GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
# GGML_MAX_NAME 64)
ggml_tensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(ggml_tensor) * 10),
    ("view_src", ctypes.POINTER(ggml_tensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def tensor_array(t: ggml_tensor) -> np.ndarray:
    """A copy of a host tensor (f32, f16 or i32, views and permutations included) in NumPy order
    ``[ne3, ne2, ne1, ne0]``."""
    if t.type not in _NP_TYPES:
        raise ValueError(f"tensor {t.name.decode()!r}: ggml type {t.type} is not f32/f16/i32")
    if not t.data:
        raise ValueError(f"tensor {t.name.decode()!r} has no host data")
    dt = np.dtype(_NP_TYPES[t.type])
    ne = [int(t.ne[i]) for i in range(4)]
    nb = [int(t.nb[i]) for i in range(4)]
    span = sum((n - 1) * s for n, s in zip(ne, nb)) + dt.itemsize
    if any(x % dt.itemsize for x in nb):
        raise ValueError(f"tensor {t.name.decode()!r}: strides {nb} are not multiples of {dt.itemsize}")
    flat = np.frombuffer((ctypes.c_char * span).from_address(t.data), dtype=dt)
    a = np.lib.stride_tricks.as_strided(flat, shape=ne[::-1], strides=nb[::-1])
    return np.array(a)  # copy: the graph's buffers are reused


@dataclass
class AttnCapture:
    """One ``radar_attn`` node of one decode step (stream 0)."""

    layer: int
    q: np.ndarray  # [Hq, D] f32
    k: np.ndarray  # [n_kv, Hkv, D] cache dtype (f16)
    v: np.ndarray  # [n_kv, Hkv, Dv]
    mask: np.ndarray  # [n_kv] f32 (0 / -inf)
    summaries: np.ndarray  # [n_seg, Hkv, W] f32, the kernel's
    omega: Optional[np.ndarray]  # [D, m] f32 (rf only)
    out: np.ndarray  # [Hq, Dv] f32, the kernel's result
    n_seg: int
    seg_len: int
    top_k: int
    n_sink: int
    n_recent: int
    score: int
    shared: bool
    scale: float
    max_bias: float
    softcap: float
    has_sinks: bool
    n_rescore: int = 0  # candidates of the two-stage selection (op param 9; 0: one stage)
    mass_target: float = 0.0  # mass target of stage two (op param 10; 0: top_k)


def read_radar_attn(t: ggml_tensor, layer: int) -> AttnCapture:
    """Copy the inputs, parameters and result of a computed ``radar_attn`` node."""
    src = [t.src[i].contents if t.src[i] else None for i in range(8)]
    q = tensor_array(src[0])[0, :, 0, :]  # [ns, Hq, 1, D] -> [Hq, D]
    k = tensor_array(src[1])[0].transpose(1, 0, 2)  # [ns, Hkv, n_kv, D] -> [n_kv, Hkv, D]
    v = tensor_array(src[2])[0].transpose(1, 0, 2)
    mask = tensor_array(src[3])[0, 0, 0, :].astype(np.float32)  # [ns, 1, rows, n_kv] -> row 0
    info = tensor_array(src[5])  # [1, 1, ns, 2]
    n_seg = int(info[0, 0, 0, 0])
    s = tensor_array(src[4])[0, :n_seg]  # [ns, n_seg_cap, Hkv, W] -> [n_seg, Hkv, W]
    omega = tensor_array(src[6])[0, 0].T.copy() if src[6] is not None else None  # [m, D] -> [D, m]
    out = tensor_array(t)[0, 0]  # [ns, 1, Hq, Dv] -> [Hq, Dv]
    p = list(t.op_params)
    f = np.array(p[6:9], dtype=np.int32).view(np.float32)
    return AttnCapture(
        layer=layer,
        q=q,
        k=k,
        v=v,
        mask=mask,
        summaries=s,
        omega=omega,
        out=out,
        n_seg=n_seg,
        seg_len=p[1],
        top_k=p[2],
        n_sink=p[3],
        n_recent=p[4],
        score=p[0],
        shared=bool(p[5]),
        scale=float(f[0]),
        max_bias=float(f[1]),
        softcap=float(f[2]),
        has_sinks=src[7] is not None,
        n_rescore=p[9],
        mass_target=float(np.array(p[10:11], dtype=np.int32).view(np.float32)[0]),
    )


class Capture:
    """The ``cb_eval`` callback: while ``active``, copies every ``radar_attn-<il>`` node into ``layers``."""

    PREFIX = b"radar_attn-"

    def __init__(self) -> None:
        self.active = False
        self.layers: dict[int, AttnCapture] = {}
        self.error: Optional[BaseException] = None

        def cb(t_ptr: int, ask: bool, _ud: Any) -> bool:
            if not self.active:
                return False if ask else True
            t = ggml_tensor.from_address(t_ptr)
            name = t.name
            if not name.startswith(self.PREFIX):
                return False if ask else True
            if ask:
                return True
            try:
                il = int(name[len(self.PREFIX) :])
                self.layers[il] = read_radar_attn(t, il)
            except Exception as e:  # never raise through C
                self.error = e
            return True

        from .. import _lib

        self.c_callback = _lib.bindings().llama_cpp.ggml_backend_sched_eval_callback(cb)

    def take(self) -> dict[int, AttnCapture]:
        if self.error is not None:
            raise RuntimeError(f"capturing the radar_attn nodes failed: {self.error}") from self.error
        out, self.layers = self.layers, {}
        return out


@contextlib.contextmanager
def eval_callback(callback: Any) -> Iterator[None]:
    """Make the contexts created inside (``radar_gguf.load``) call ``callback`` as their ``cb_eval``.

    llama-cpp-python's ``Llama`` has no argument for it; its constructor takes the context params from
    ``llama_context_default_params()``, which is wrapped here for the duration of the block.
    """
    from .. import _lib

    C = _lib.bindings().llama_cpp
    orig = C.llama_context_default_params

    def with_callback() -> Any:
        p = orig()
        p.cb_eval = callback
        p.cb_eval_user_data = None
        return p

    C.llama_context_default_params = with_callback
    try:
        yield
    finally:
        C.llama_context_default_params = orig


def capture_decode(
    model: Any,
    capture: Capture,
    tokens: Sequence[int],
    n_ctx: int,
    n_steps: int,
    stride: int,
    capture_cfg: RadarConfig,
    on_step: Callable[[int, dict[int, AttnCapture]], None],
    cache_dir: Any = None,
    progress: Callable[[str], None] = log,
) -> None:
    """Prefill ``tokens[:n_ctx]`` (disk-cached, dense), switch Radar to ``capture_cfg``, then decode the
    following tokens one step at a time (teacher forcing); every ``stride``-th step (from the first)
    the radar_attn nodes are captured and handed to ``on_step(step, captures)``."""
    if len(tokens) < n_ctx + (n_steps - 1) * stride:
        raise ValueError(f"need {n_ctx + (n_steps - 1) * stride} tokens, got {len(tokens)}")
    t0 = time.perf_counter()
    how = prefill_cached(model, tokens[:n_ctx], cache_dir)
    progress(f"# context {n_ctx}: {how} in {time.perf_counter() - t0:.0f} s")
    model.set_radar(capture_cfg)
    for step in range((n_steps - 1) * stride + 1):
        capture.active = step % stride == 0
        if step == 0:
            model.prefill(tokens[:n_ctx])  # re-decodes token n_ctx-1: the first Radar decode step
        else:
            model.llama.eval([tokens[n_ctx + step - 1]])
        capture.active = False
        if step % stride == 0:
            caps = capture.take()
            if not caps:
                raise RuntimeError(
                    "no radar_attn node in the decode graph: is Radar on above dense_below, with flash attention?"
                )
            on_step(step, caps)
