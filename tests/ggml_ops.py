"""Run single ggml ops of our library on NumPy arrays (ctypes over libggml-base / libggml-cpu).

Test helper: lets the Radar CPU kernels be checked against ``radar_gguf.reference`` directly,
without a model. Layouts follow ggml: a NumPy array of shape (ne3, ne2, ne1, ne0) is a ggml
tensor [ne0, ne1, ne2, ne3].
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from radar_gguf import _lib

F32, F16, Q8_0, I32 = 0, 1, 8, 26
_c = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _load():
    libdir = os.path.dirname(_lib.bindings().llama_cpp._lib._name)
    base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
    cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"))
    base.ggml_init.argtypes = [_InitParams]
    base.ggml_init.restype = _c
    base.ggml_free.argtypes = [_c]
    base.ggml_new_tensor_4d.argtypes = [
        _c,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
    ]
    base.ggml_new_tensor_4d.restype = _c
    base.ggml_get_data.argtypes = [_c]
    base.ggml_get_data.restype = _c
    base.ggml_nbytes.argtypes = [_c]
    base.ggml_nbytes.restype = ctypes.c_size_t
    base.ggml_permute.argtypes = [_c, _c, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    base.ggml_permute.restype = _c
    base.ggml_new_graph.argtypes = [_c]
    base.ggml_new_graph.restype = _c
    base.ggml_build_forward_expand.argtypes = [_c, _c]
    base.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        _c,
        _c,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        _c,
    ]
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_radar_summarize.argtypes = [_c, _c, _c, _c, _c, _c, ctypes.c_int, ctypes.c_int, ctypes.c_float]
    base.ggml_radar_summarize.restype = _c
    base.ggml_radar_attn.argtypes = (
        [_c] + [_c] * 7 + [ctypes.c_int] * 5 + [ctypes.c_bool] + [ctypes.c_float] * 3
    )
    base.ggml_radar_attn.restype = _c
    base.ggml_radar_attn_add_sinks.argtypes = [_c, _c]
    base.ggml_radar_attn_set_rescore.argtypes = [_c, ctypes.c_int]
    base.ggml_radar_attn_set_mass.argtypes = [_c, ctypes.c_float]
    base.ggml_radar_attn_set_rescore_adaptive.argtypes = [_c, ctypes.c_int, ctypes.c_float]
    base.ggml_flash_attn_ext.argtypes = [_c, _c, _c, _c, _c, ctypes.c_float, ctypes.c_float, ctypes.c_float]
    base.ggml_flash_attn_ext.restype = _c
    base.ggml_flash_attn_ext_add_sinks.argtypes = [_c, _c]
    base.ggml_flash_attn_ext_set_prec.argtypes = [_c, ctypes.c_int]
    cpu.ggml_graph_compute_with_ctx.argtypes = [_c, _c, ctypes.c_int]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    cpu.ggml_cpu_init.argtypes = []
    cpu.ggml_cpu_init()
    return base, cpu


_libs = None


def libs():
    global _libs
    if _libs is None:
        _libs = _load()
    return _libs


class Graph:
    """A ggml context holding inputs and ops; ``compute()`` runs it on the CPU backend."""

    def __init__(self, mem_mb: int = 512, threads: int = 2) -> None:
        self.base, self.cpu = libs()
        self.ctx = self.base.ggml_init(_InitParams(mem_mb << 20, None, False))
        if not self.ctx:
            raise MemoryError("ggml_init failed")
        self.threads = threads

    def close(self) -> None:
        if self.ctx:
            self.base.ggml_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        self.close()

    def tensor(self, arr: np.ndarray, type_: int = F32) -> int:
        """A ggml tensor holding ``arr`` (shape (ne3, ne2, ne1, ne0), up to 4 dims) as ``type_``."""
        a = np.ascontiguousarray(arr)
        shape = (1,) * (4 - a.ndim) + a.shape
        t = self.base.ggml_new_tensor_4d(self.ctx, type_, shape[3], shape[2], shape[1], shape[0])
        dst = self.base.ggml_get_data(t)
        n = self.base.ggml_nbytes(t)
        if type_ == F32:
            src = a.astype(np.float32).tobytes()
        elif type_ == F16:
            src = a.astype(np.float16).tobytes()
        elif type_ == I32:
            src = a.astype(np.int32).tobytes()
        elif type_ == Q8_0:
            f = a.astype(np.float32)
            self.base.ggml_quantize_chunk(Q8_0, f.ctypes.data, dst, 0, f.size // shape[3], shape[3], None)
            return t
        else:
            raise ValueError(type_)
        assert len(src) == n
        ctypes.memmove(dst, src, n)
        return t

    def read(self, t: int, shape: tuple, type_: int = F32) -> np.ndarray:
        n = self.base.ggml_nbytes(t)
        buf = (ctypes.c_char * n).from_address(self.base.ggml_get_data(t))
        dtype = {F32: np.float32, F16: np.float16}[type_]
        return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape).astype(np.float32)

    def permute(self, t: int, *axes: int) -> int:
        return self.base.ggml_permute(self.ctx, t, *axes)

    def compute(self, out: int) -> None:
        g = self.base.ggml_new_graph(self.ctx)
        self.base.ggml_build_forward_expand(g, out)
        rc = self.cpu.ggml_graph_compute_with_ctx(self.ctx, g, self.threads)
        if rc != 0:
            raise RuntimeError(f"ggml_graph_compute failed: {rc}")


def dequant(arr: np.ndarray, type_: int) -> np.ndarray:
    """What the kernel sees after storing ``arr`` as ``type_`` (for exact references)."""
    if type_ == F16:
        return arr.astype(np.float16).astype(np.float64)
    if type_ == Q8_0:
        # ggml's quantize_row_q8_0_ref: q = round(x / d) with d in f32, stored with d in f16
        blocks = arr.reshape(-1, 32).astype(np.float32)
        d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        x = blocks * inv
        q = np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))  # roundf: halves away from zero
        return (q * d.astype(np.float16).astype(np.float64)).reshape(arr.shape)
    return arr.astype(np.float64)


def radar_ops(
    q,
    k,
    v,
    mask,
    *,
    seg_len,
    top_k,
    n_sink,
    n_recent,
    score,
    scale,
    n_seg=None,
    omega=None,
    shared=False,
    softcap=0.0,
    max_bias=0.0,
    sinks=None,
    kv_type=F16,
    s_type=F32,
    threads=2,
    n_rescore=0,
    mass_target=0.0,
    rescore_max=0,
    rescore_mass=0.0,
):
    """summarize (all complete segments) + radar_attn on one stream; summaries stored as ``s_type``.

    q: [Hq, D]; k: [n_kv, Hkv, D]; v: [n_kv, Hkv, Dv]; mask: [n_kv] float (0 / -inf / finite).
    Returns (out [Hq, Dv], summaries [n_seg, Hkv, W]).
    """
    from radar_gguf.lab.reference import summary_width

    n_kv, hkv, d = k.shape
    hq, dv = q.shape[0], v.shape[2]
    n_seg = n_kv // seg_len if n_seg is None else n_seg
    m = 0 if omega is None else omega.shape[1]
    w = summary_width(score, d, m)
    base = libs()[0]
    with Graph(threads=threads) as g:
        tq = g.tensor(q.reshape(1, hq, 1, d))  # [D, 1, Hq, 1]
        tk = g.tensor(k.reshape(1, n_kv, hkv, d), kv_type)  # [D, Hkv, n_kv, 1]
        tv = g.tensor(v.reshape(1, n_kv, hkv, dv), kv_type)
        tm = g.tensor(mask.reshape(1, 1, 1, n_kv), F16)  # [n_kv, 1, 1, 1]
        ts = g.tensor(np.zeros((1, max(n_seg, 1), hkv, w)), s_type)  # [W, Hkv, n_seg, 1]
        tid = g.tensor(np.arange(max(n_seg, 1)).reshape(1, -1) if n_seg else -np.ones((1, 1)), I32)
        tinfo = g.tensor(np.array([[n_seg, 0]]), I32)
        tom = g.tensor(omega.T) if omega is not None else None  # [D, m]
        su = base.ggml_radar_summarize(g.ctx, ts, tk, tm, tid, tom, score, seg_len, scale)
        out = base.ggml_radar_attn(
            g.ctx,
            tq,
            g.permute(tk, 0, 2, 1, 3),
            g.permute(tv, 0, 2, 1, 3),
            tm,
            su,
            tinfo,
            tom,
            score,
            seg_len,
            top_k,
            n_sink,
            n_recent,
            shared,
            scale,
            max_bias,
            softcap,
        )
        if sinks is not None:
            base.ggml_radar_attn_add_sinks(out, g.tensor(sinks))
        base.ggml_radar_attn_set_rescore(out, n_rescore)
        base.ggml_radar_attn_set_mass(out, mass_target)
        base.ggml_radar_attn_set_rescore_adaptive(out, rescore_max, rescore_mass)
        g.compute(out)
        return g.read(out, (hq, dv)), g.read(su, (max(n_seg, 1), hkv, w), s_type)[:n_seg]


def flash_attn(q, k, v, mask, *, scale, softcap=0.0, max_bias=0.0, sinks=None, kv_type=F16, threads=2):
    """ggml's dense flash attention on the same layout (the path llama.cpp takes without Radar)."""
    n_kv, hkv, d = k.shape
    hq, dv = q.shape[0], v.shape[2]
    base = libs()[0]
    with Graph(threads=threads) as g:
        tq = g.tensor(q.reshape(1, hq, 1, d))
        tk = g.tensor(k.reshape(1, n_kv, hkv, d), kv_type)
        tv = g.tensor(v.reshape(1, n_kv, hkv, dv), kv_type)
        tm = g.tensor(mask.reshape(1, 1, 1, n_kv), F16)
        out = base.ggml_flash_attn_ext(
            g.ctx, tq, g.permute(tk, 0, 2, 1, 3), g.permute(tv, 0, 2, 1, 3), tm, scale, max_bias, softcap
        )
        base.ggml_flash_attn_ext_set_prec(out, 10)  # GGML_PREC_F32
        if sinks is not None:
            base.ggml_flash_attn_ext_add_sinks(out, g.tensor(sinks))
        g.compute(out)
        return g.read(out, (hq, dv))


def make_case(seed, d, ratio, n_kv=2048, hkv=2, holes=True, q_scale=2.0):
    """Random q [Hq, D], k, v [n_kv, Hkv, D] and a mask [n_kv] with padding past the used cells, freed cells and
    a whole empty segment (what a KV cache after seq_rm looks like); returns (q, k, v, mask, used)."""
    rng = np.random.default_rng(seed)
    hq = hkv * ratio
    k = rng.normal(size=(n_kv, hkv, d))
    v = rng.normal(size=(n_kv, hkv, d))
    q = rng.normal(size=(hq, d)) * q_scale
    mask = np.zeros(n_kv)
    used = n_kv - 71
    mask[used:] = -np.inf  # padding beyond the used cells, as llama.cpp pads n_kv to 256
    if holes:
        mask[rng.choice(used, size=used // 10, replace=False)] = -np.inf  # freed cells (seq_rm)
        mask[130:170] = -np.inf  # a whole empty segment
    return q, k, v, mask, used
