"""The Radar Metal kernels (native/files/ggml/src/ggml-metal/kernels/radar.metal), run on the CPU through the
MSL emulation of tests/metal/msl_emu.h, against the CPU ops (the reference backend) and the NumPy reference.

No Metal compiler is needed: the harness tests/metal/radar_emu.cpp compiles the kernel source as C++ and
dispatches the kernels with the launch plan the host code uses (ggml-metal-radar.h). What the emulation
cannot check (MSL type rules, SIMD scheduling, fast math) is listed at the top of msl_emu.h.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ggml_ops import F16, F32, Q8_0, dequant, make_case, radar_ops

from radar_gguf.lab import reference as R

ROOT = Path(__file__).resolve().parents[1]
METAL_DIR = ROOT / "native/files/ggml/src/ggml-metal"
KERNEL_SRC = METAL_DIR / "kernels/radar.metal"
EMU_DIR = ROOT / "tests/metal"
SCORES = [R.SCORE_RF, R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX, R.SCORE_ORACLE, R.SCORE_UNION]

_p = ctypes.c_void_p
_i64p = ctypes.POINTER(ctypes.c_int64)
_szp = ctypes.POINTER(ctypes.c_size_t)
_ci, _cf = ctypes.c_int, ctypes.c_float


def _compiler():
    return shutil.which("g++") or shutil.which("c++")


def build_harness(out: Path, kernel_src: Path | None = None) -> ctypes.CDLL:
    """Compiles tests/metal/radar_emu.cpp (with another kernel source when given) into a shared library."""
    cxx = _compiler()
    cmd = ["nice", cxx, "-O2", "-std=c++17", "-pthread", "-shared", "-fPIC"]
    cmd += ["-I", str(EMU_DIR), "-I", str(EMU_DIR / "shim"), "-I", str(METAL_DIR)]
    if kernel_src is not None:
        cmd.append(f'-DRADAR_METAL_SRC="{kernel_src}"')
    cmd += [str(EMU_DIR / "radar_emu.cpp"), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    lib.radar_emu_kernel_names.restype = ctypes.c_char_p
    lib.radar_emu_summarize.argtypes = (
        [_ci, _p, _i64p, _szp] + [_ci, _p, _i64p, _szp] + [_p, _i64p, _szp] * 2 + [_ci, _p, _i64p, _szp]
    ) + [_ci, _ci, _cf, ctypes.c_char_p, _ci]
    lib.radar_emu_attn.argtypes = (
        [_p, _i64p, _szp]
        + [_ci, _p, _i64p, _szp]
        + [_ci, _p, _szp]
        + [_ci, _p, _szp]
        + [_ci, _p, _i64p, _szp]
        + [_p, _szp]
        + [_p, _i64p, _szp]
        + [_p, _p, _szp]
        + [_ci] * 6
        + [_cf] * 3
        + [_ci, _cf, _ci, _p, ctypes.c_char_p, _ci]
    )
    return lib


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++ or c++) to build the Metal emulation harness")
    return build_harness(tmp_path_factory.mktemp("metal_emu") / "radar_emu.so")


# ---- ggml layouts as plain arrays ----


class Tensor:
    """A contiguous ggml tensor [ne0, ne1, ne2, ne3] in a bytes buffer, or a strided view of one."""

    def __init__(self, buf: np.ndarray, ne, nb, type_: int):
        self.buf, self.type = buf, type_
        self.ne = (ctypes.c_int64 * 4)(*ne)
        self.nb = (ctypes.c_size_t * 4)(*nb)

    @property
    def ptr(self):
        return self.buf.ctypes.data


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_0_ref over rows of a multiple of 32, as the bytes of block_q8_0 (f16 d, 32 int8)."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = blocks * inv
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    out = np.zeros((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(-1)


def row_bytes(d: int, type_: int) -> int:
    return {F32: 4 * d, F16: 2 * d, Q8_0: d // 32 * 34}[type_]


def make_tensor(arr: np.ndarray, type_: int) -> Tensor:
    """arr of NumPy shape (ne3, ne2, ne1, ne0) (fewer dims: leading ones) as a contiguous ggml tensor."""
    shape = (1,) * (4 - arr.ndim) + arr.shape
    ne = shape[::-1]
    if type_ == F32:
        buf = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint8).reshape(-1)
    elif type_ == F16:
        buf = np.ascontiguousarray(arr, dtype=np.float16).view(np.uint8).reshape(-1)
    elif type_ == Q8_0:
        buf = quantize_q8_0(np.asarray(arr, dtype=np.float64))
    else:
        buf = np.ascontiguousarray(arr, dtype=np.int32).view(np.uint8).reshape(-1)
    rb = row_bytes(ne[0], type_) if type_ in (F32, F16, Q8_0) else 4 * ne[0]
    nb = (rb // ne[0] if type_ != Q8_0 else 34, rb, rb * ne[1], rb * ne[1] * ne[2])
    return Tensor(buf, ne, nb, type_)


def permute_kv(t: Tensor) -> Tensor:
    """The op's K/V view [D, n_kv, Hkv, ns] of the cache [D, Hkv, n_kv, ns] (ggml_permute 0, 2, 1, 3)."""
    ne, nb = list(t.ne), list(t.nb)
    return Tensor(t.buf, (ne[0], ne[2], ne[1], ne[3]), (nb[0], nb[2], nb[1], nb[3]), t.type)


def _check(rc: int, err) -> None:
    if rc != 0:
        raise RuntimeError(err.value.decode())


def emu_summarize(
    lib,
    k,
    mask,
    *,
    seg_len,
    score,
    scale,
    kv_type=F16,
    s_type=F32,
    omega=None,
    n_seg=None,
    ids=None,
    mask_type=F16,
):
    """summarize on the emulated kernels, one or more streams. k: [ns, n_kv, Hkv, D], mask: [ns, n_kv] or
    [ns, n_rows, n_kv] (the last row gives validity), ids: [ns, n_upd] (default: every segment).
    Returns summaries [ns, n_seg, Hkv, W] (as float; rows not listed stay 0)."""
    ns, n_kv, hkv, d = k.shape
    n_seg = n_kv // seg_len if n_seg is None else n_seg
    m = 0 if omega is None else omega.shape[1]
    w = R.summary_width(score, d, m)
    tk = make_tensor(k, kv_type)
    tm = make_tensor(mask.reshape(ns, 1, -1, n_kv), mask_type)
    ids = make_tensor(np.tile(np.arange(n_seg), (ns, 1)) if ids is None else ids, 26)
    ts = make_tensor(np.zeros((ns, n_seg, hkv, w)), s_type)
    to = make_tensor(omega.T, F32) if omega is not None else None
    err = ctypes.create_string_buffer(256)
    rc = lib.radar_emu_summarize(
        kv_type,
        tk.ptr,
        tk.ne,
        tk.nb,
        mask_type,
        tm.ptr,
        tm.ne,
        tm.nb,
        ids.ptr,
        ids.ne,
        ids.nb,
        to.ptr if to else None,
        to.ne if to else None,
        to.nb if to else None,
        s_type,
        ts.ptr,
        ts.ne,
        ts.nb,
        score,
        seg_len,
        scale,
        err,
        256,
    )
    _check(rc, err)
    dt = np.float32 if s_type == F32 else np.float16
    return ts.buf.view(dt).reshape(ns, n_seg, hkv, w).astype(np.float64)


def emu_attn(
    lib,
    q,
    k,
    v,
    mask,
    s,
    *,
    seg_len,
    top_k,
    n_sink,
    n_recent,
    score,
    scale,
    n_seg,
    omega=None,
    shared=False,
    softcap=0.0,
    max_bias=0.0,
    sinks=None,
    kv_type=F16,
    v_type=None,
    s_type=F32,
    n_rescore=0,
    mass_target=0.0,
    target_split=4,
    mask_type=F16,
):
    """radar_attn on the emulated kernels. q: [ns, Hq, D], k/v: [ns, n_kv, Hkv, D], mask: [ns, n_kv],
    s: [ns, n_seg_cap, Hkv, W], n_seg: per stream; target_split 0: as the host. Returns (out [ns, Hq, D],
    sel [ns, n_items, 1 + n_seg_cap]: the kept segments of each item after their count, -1: no selection ran)."""
    ns, n_kv, hkv, d = k.shape
    hq = q.shape[1]
    v_type = kv_type if v_type is None else v_type
    tq = make_tensor(q.reshape(ns, hq, 1, d), F32)
    tk = permute_kv(make_tensor(k, kv_type))
    tv = permute_kv(make_tensor(v, v_type))
    tm = make_tensor(mask.reshape(ns, 1, 1, n_kv), mask_type)
    ts = make_tensor(s, s_type)
    info = make_tensor(np.array([[n, 0] for n in np.broadcast_to(n_seg, (ns,))]), 26)
    to = make_tensor(omega.T, F32) if omega is not None else None
    tsk = make_tensor(np.asarray(sinks, dtype=np.float32), F32) if sinks is not None else None
    dst = make_tensor(np.zeros((ns, 1, hq, d)), F32)
    n_items = hkv if shared else hq
    sel = np.zeros((ns, n_items, 1 + s.shape[1]), dtype=np.int32)
    err = ctypes.create_string_buffer(256)
    rc = lib.radar_emu_attn(
        tq.ptr,
        tq.ne,
        tq.nb,
        kv_type,
        tk.ptr,
        tk.ne,
        tk.nb,
        v_type,
        tv.ptr,
        tv.nb,
        mask_type,
        tm.ptr,
        tm.nb,
        s_type,
        ts.ptr,
        ts.ne,
        ts.nb,
        info.ptr,
        info.nb,
        to.ptr if to else None,
        to.ne if to else None,
        to.nb if to else None,
        tsk.ptr if tsk else None,
        dst.ptr,
        dst.nb,
        score,
        seg_len,
        top_k,
        n_sink,
        n_recent,
        int(shared),
        scale,
        max_bias,
        softcap,
        n_rescore,
        mass_target,
        target_split,
        sel.ctypes.data,
        err,
        256,
    )
    _check(rc, err)
    return dst.buf.view(np.float32).reshape(ns, hq, d).astype(np.float64), sel


def run_both(lib, q, k, v, mask, *, kv_type=F16, s_type=F32, omega=None, target_split=4, mask_type=F16, **kw):
    """The CPU ops and the emulated attention on the CPU's summaries: (cpu out, emu out, cpu summaries)."""
    cpu, s = radar_ops(q, k, v, mask, kv_type=kv_type, s_type=s_type, omega=omega, **kw)
    n_seg = kw["n_seg"]
    s_full = np.zeros((1, max(n_seg, 1)) + s.shape[1:])
    s_full[0, :n_seg] = s
    akw = {x: kw[x] for x in ("seg_len", "top_k", "n_sink", "n_recent", "score", "scale", "n_seg")}
    for x in ("shared", "softcap", "max_bias", "sinks", "n_rescore", "mass_target"):
        if x in kw:
            akw[x] = kw[x]
    out, _ = emu_attn(
        lib, q[None], k[None], v[None], mask[None], s_full, kv_type=kv_type, s_type=s_type, omega=omega,
        target_split=target_split, mask_type=mask_type, **akw,
    )  # fmt: skip
    return cpu, out[0], s


# ---- tests ----


def test_harness_has_every_kernel_of_the_source(emu):
    """The harness dispatches by the host names of radar.metal: every instantiation, and no other name."""
    import re

    src = KERNEL_SRC.read_text()
    in_src = set(re.findall(r'host_name\("([a-z0-9_]+)"\)', src))
    in_src |= set(re.findall(r"(?<!>\n)^kernel void (kernel_radar_\w+)\(", src, flags=re.M))  # not templates
    names = set(emu.radar_emu_kernel_names().decode().split())
    assert in_src == names


def test_q8_0_bytes_match_ggml():
    """The test's q8_0 packing is ggml's (so K/V q8_0 inputs are what the CPU op quantizes)."""
    from ggml_ops import Graph

    x = np.random.default_rng(0).normal(size=(4, 64)) * 3
    with Graph() as g:
        t = g.tensor(x, Q8_0)
        n = g.base.ggml_nbytes(t)
        ref = bytes((ctypes.c_char * n).from_address(g.base.ggml_get_data(t)))
    assert quantize_q8_0(x).tobytes() == ref


SUM_CASES = [(sc, F16, st, 64) for sc in SCORES for st in (F32, F16)]
SUM_CASES += [
    (R.SCORE_MEANVAR, F32, F32, 128),
    (R.SCORE_MEANVAR, Q8_0, F32, 256),
    (R.SCORE_MINMAX, Q8_0, F16, 64),
]


@pytest.mark.parametrize("score,kv_type,s_type,d", SUM_CASES)
def test_summaries_match_cpu(emu, score, kv_type, s_type, d):
    q, k, v, mask, used = make_case(3 + score + d, d, 2, n_kv=512)
    seg_len, scale = 27, d**-0.5
    n_seg = used // seg_len
    omega = R.make_omega(d, 4 * d, seed=3) if score == R.SCORE_RF else None
    _, s_cpu = radar_ops(
        q, k, v, mask, seg_len=seg_len, top_k=4, n_sink=1, n_recent=32, score=score, scale=scale,
        n_seg=n_seg, omega=omega, kv_type=kv_type, s_type=s_type,
    )  # fmt: skip
    s = emu_summarize(emu, k[None], mask[None], seg_len=seg_len, score=score, scale=scale, kv_type=kv_type,
                      s_type=s_type, omega=omega, n_seg=n_seg)[0]  # fmt: skip
    assert (s[..., -1] == s_cpu[..., -1]).all()  # the counts of valid cells
    assert (s_cpu[..., -1] == 0).any()  # the case has an empty segment: its row is zeros
    if s_type == F32:
        np.testing.assert_allclose(s, s_cpu, atol=2e-5, rtol=1e-4)
    else:
        # both round an f32 value to f16 (an ulp apart where they straddle a rounding point); RF rows near 0
        # keep the f32 paths' absolute difference (log-mean-exp of terms of order 1)
        np.testing.assert_allclose(s, s_cpu, rtol=1e-3, atol=2e-5)


def test_f16_summaries_saturate(emu):
    d, seg_len = 64, 64
    q, k, v, mask, used = make_case(3, d, 4, n_kv=1024, holes=False)
    k[3 * seg_len : 4 * seg_len] *= 300.0
    s = emu_summarize(
        emu, k[None], mask[None], seg_len=seg_len, score=R.SCORE_MEANVAR, scale=d**-0.5, s_type=F16
    )
    assert np.isfinite(s).all() and s.max() == 65504.0


def test_summaries_listed_segments_last_mask_row(emu):
    """Only the listed segments are written (-1 skips), validity comes from the mask's last row (f32 here)."""
    d, seg_len = 64, 32
    q, k, v, mask, used = make_case(9, d, 2, n_kv=512)
    n_seg = used // seg_len
    rows = np.stack([np.full(len(mask), -np.inf), np.zeros(len(mask)), mask])  # only the last row counts
    ids = np.array([[3, -1, 0, 7, n_seg - 1, -1]])
    s = emu_summarize(emu, k[None], rows[None], seg_len=seg_len, score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=n_seg,
                      ids=ids, mask_type=F32)[0]  # fmt: skip
    _, s_cpu = radar_ops(q, k, v, mask, seg_len=seg_len, top_k=4, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR,
                         scale=d**-0.5, n_seg=n_seg)  # fmt: skip
    listed = [0, 3, 7, n_seg - 1]
    np.testing.assert_allclose(s[listed], s_cpu[listed], atol=2e-5, rtol=1e-4)
    assert (np.delete(s, listed, axis=0) == 0).all()


ATTN_TOL = 2e-4  # the same rounded q, f32 softmax on both; only summation orders differ


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("shared", [False, True])
def test_every_score_matches_cpu(emu, score, shared):
    d = 64
    q, k, v, mask, used = make_case(7 + score, d, 7)
    seg_len = 27
    omega = R.make_omega(d, 4 * d, seed=3) if score == R.SCORE_RF else None
    cpu, out, _ = run_both(
        emu, q, k, v, mask, omega=omega, seg_len=seg_len, top_k=8, n_sink=4, n_recent=40, score=score,
        scale=d**-0.5, n_seg=used // seg_len, shared=shared,
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)


@pytest.mark.parametrize("d,kv_type", [(64, F16), (128, Q8_0), (256, F32), (128, F16), (64, Q8_0)])
def test_meanvar_head_sizes_and_types(emu, d, kv_type):
    q, k, v, mask, used = make_case(d * 10 + 4, d, 4, n_kv=1024)
    cpu, out, _ = run_both(
        emu, q, k, v, mask, kv_type=kv_type, seg_len=32, top_k=6, n_sink=1, n_recent=32,
        score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=used // 32,
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL if kv_type != Q8_0 else 1e-3)


def test_softcap_alibi_sinks_f16_summaries(emu):
    """ALiBi distances in an f32 mask, a softcap, sink logits, f16 summaries; the split the host asks for."""
    d = 128
    q, k, v, mask, used = make_case(11, d, 4, n_kv=1024)
    mask = np.where(np.isfinite(mask), -np.abs(np.arange(len(mask)) - used) * 1.0, -np.inf)
    sinks = np.linspace(-1, 2, 8)
    cpu, out, _ = run_both(
        emu, q, k, v, mask, s_type=F16, seg_len=32, top_k=10, n_sink=1, n_recent=32,
        score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=used // 32, softcap=20.0, max_bias=8.0, sinks=sinks,
        mask_type=F32, target_split=0,
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)


@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_all_segments_is_dense(emu, kv_type):
    """top_k >= every segment: the selection kernels are left out (the plan) and every cell is attended."""
    d = 64
    q, k, v, mask, used = make_case(5, d, 7, n_kv=1536)
    cpu, out, _ = run_both(
        emu, q, k, v, mask, kv_type=kv_type, seg_len=27, top_k=10_000, n_sink=1, n_recent=32,
        score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=used // 27,
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL if kv_type == F16 else 1e-3)
    qq = dequant(q, Q8_0) if kv_type == Q8_0 else q
    dense = R.dense_attention(qq, dequant(k, kv_type), dequant(v, kv_type), mask, d**-0.5)
    np.testing.assert_allclose(out, dense, atol=5e-4 if kv_type == F16 else 2e-3)


@pytest.mark.parametrize("shared", [False, True])
def test_narrow_keys(emu, shared):
    """As test-backend-ops' ties=2: keys in [0.5, 0.502], segment scores a few ulps apart (streams of different
    lengths, f16 summaries); the float paths differ in summation order, the outputs must still agree."""
    rng = np.random.default_rng(2)
    d, hkv, ratio, n_kv, seg = 128, 2, 4, 2048, 16
    k = rng.uniform(0.5, 0.502, size=(n_kv, hkv, d))
    v = rng.uniform(-1, 1, size=(n_kv, hkv, d))
    q = rng.uniform(-1, 1, size=(hkv * ratio, d))
    cpu, out, _ = run_both(
        emu, q, k, v, np.zeros(n_kv), s_type=F16, seg_len=seg, top_k=8, n_sink=1, n_recent=seg,
        score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=n_kv // seg - 1, shared=shared, target_split=0,
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_rescore_matches_cpu(emu, shared, kv_type):
    """Two stages: the 24 best segments by summary, rescored exactly, the best 6 kept."""
    d = 64
    q, k, v, mask, used = make_case(65, d, 4, q_scale=4.0)
    kw = dict(
        seg_len=16, top_k=6, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=used // 16
    )
    cpu, out, _ = run_both(emu, q, k, v, mask, kv_type=kv_type, shared=shared, n_rescore=24, **kw)
    tol = ATTN_TOL if kv_type == F16 else 1e-3
    np.testing.assert_allclose(out, cpu, atol=tol)
    one, _ = radar_ops(q, k, v, mask, kv_type=kv_type, shared=shared, **kw)
    assert np.abs(one - cpu).max() > 10 * tol  # stage two changed the selection: the comparison can fail


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("n_rescore", [0, 24])
def test_union_matches_cpu(emu, shared, n_rescore):
    """UNION: stage one takes half its picks by MEANVAR and the rest, of the others, by the min/max bound (24
    candidates for stage two, or the 6 kept with one stage); the output is the CPU op's and differs from
    what either score alone selects (a kernel that took every pick from one score would fail)."""
    d = 64
    q, k, v, mask, used = make_case(65, d, 4, q_scale=4.0)
    kw = dict(seg_len=16, top_k=6, n_sink=1, n_recent=32, scale=d**-0.5, n_seg=used // 16)
    cpu, out, _ = run_both(emu, q, k, v, mask, score=R.SCORE_UNION, shared=shared, n_rescore=n_rescore, **kw)
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    for alone in (R.SCORE_MEANVAR, R.SCORE_MINMAX):
        one, _ = radar_ops(q, k, v, mask, score=alone, shared=shared, n_rescore=n_rescore, **kw)
        assert np.abs(one - cpu).max() > 10 * ATTN_TOL, R.SCORE_NAMES[alone]


@pytest.mark.parametrize("shared", [False, True])
def test_rescore_excludes_the_sinks(emu, shared):
    """Stage two scores a candidate by its cells past the sinks: keys every head asks for, planted in the sinks
    (n_sink 12 of segment 0's 16 cells), must not win segment 0 a place (its sink cells are attended anyway)."""
    d, seg_len = 64, 16
    q, k, v, mask, used = make_case(8, d, 4, n_kv=1024)
    mask[:16] = 0.0
    k[:12] = q.reshape(2, 4, d).mean(axis=1)[None] * 0.6
    kw = dict(
        seg_len=seg_len,
        top_k=4,
        n_sink=12,
        n_recent=32,
        score=R.SCORE_MEANVAR,
        scale=d**-0.5,
        n_seg=used // 16,
    )
    cpu, out, s = run_both(emu, q, k, v, mask, shared=shared, n_rescore=16, **kw)
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    _, sel = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], shared=shared, n_rescore=16, **kw)
    assert not (sel[0, :, 1:5] == 0).any()  # segment 0 is not among the kept candidates of any item
    # by its summary it is the best candidate: one stage keeps it
    _, sel1 = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], shared=shared, **kw)
    assert (sel1[0, :, 1:5] == 0).any(axis=1).all()


@pytest.mark.parametrize("n_sink", [17, 40])
def test_sinks_past_the_first_segment(emu, n_sink):
    """More sinks than a segment holds, every candidate rescored: the segments inside the sinks have no cells of
    their own to score. Against the NumPy reference (q rounded to f16 as the kernel does) and the CPU op."""
    d = 64
    q, k, v, mask, used = make_case(8, d, 4, n_kv=1024)
    n_seg = used // 16
    kw = dict(
        seg_len=16, top_k=4, n_sink=n_sink, n_recent=32, score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=n_seg
    )
    s = emu_summarize(emu, k[None], mask[None], seg_len=16, score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=n_seg)
    out, _ = emu_attn(emu, q[None], k[None], v[None], mask[None], s, n_rescore=n_seg, **kw)
    ref, _ = R.radar_attention(dequant(q, F16), dequant(k, F16), dequant(v, F16), mask, s[0], n_seg, 16, 4, n_sink,
                               32, R.SCORE_MEANVAR, d**-0.5, n_rescore=n_seg)  # fmt: skip
    np.testing.assert_allclose(out[0], ref, atol=1e-5)
    cpu, _ = radar_ops(q, k, v, mask, n_rescore=n_seg, **kw)
    np.testing.assert_allclose(out[0], cpu, atol=ATTN_TOL)


def mass_case():
    """test_radar_ops' mass-target case: 24 candidates rescored, top_k 6, the kept count differs per head."""
    q, k, v, mask, used = make_case(62, 64, 4, q_scale=3.0)
    kw = dict(
        seg_len=16, top_k=6, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=64**-0.5, n_seg=used // 16
    )
    return q, k, v, mask, kw


@pytest.mark.parametrize("shared", [False, True])
def test_mass_target_matches_cpu(emu, shared):
    """Mass target 0.7 of stage two (f32 K/V as in test_radar_ops): past the 6 best of 24 rescored candidates,
    more are kept until the share is reached, a different number per item, the reference's counts."""
    q, k, v, mask, kw = mass_case()
    cpu, out, s = run_both(
        emu, q, k, v, mask, kv_type=F32, shared=shared, n_rescore=24, mass_target=0.7, **kw
    )
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    _, sel = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], kv_type=F32, shared=shared,
                      n_rescore=24, mass_target=0.7, **kw)  # fmt: skip
    _, ref_sel = R.radar_attention(q, k, v, mask, s.astype(np.float64), kw["n_seg"], 16, 6, 1, 32, R.SCORE_MEANVAR,
                                   64**-0.5, shared=shared, n_rescore=24, mass_target=0.7)  # fmt: skip
    counts = sel[0, :, 0]
    items = range(0, len(ref_sel), 4) if shared else range(len(ref_sel))
    assert counts.tolist() == [len(ref_sel[h]) for h in items]
    assert counts.min() >= 6 + 2 and counts.max() > 6 + 2  # the target adapts the count (+2: the recent)
    fixed, _ = radar_ops(q, k, v, mask, kv_type=F32, shared=shared, n_rescore=24, **kw)
    assert np.abs(fixed - cpu).max() > 10 * ATTN_TOL  # the comparison can fail


@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_mass_target_sinks_and_types(emu, kv_type):
    """Mass target 0.7 with f16/q8_0 K/V and large sink logits: the sinks are part of the always-attended mass,
    so fewer candidates reach the target than without them."""
    q, k, v, mask, kw = mass_case()
    sinks = np.linspace(4, 6, 8)
    cpu, out, s = run_both(
        emu, q, k, v, mask, kv_type=kv_type, n_rescore=24, mass_target=0.7, sinks=sinks, **kw
    )  # fmt: skip
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL if kv_type == F16 else 1e-3)
    akw = dict(kv_type=kv_type, n_rescore=24, mass_target=0.7, **kw)
    _, sel = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], sinks=sinks, **akw)
    _, sel0 = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], **akw)
    assert (sel[0, :, 0] <= sel0[0, :, 0]).all() and (sel[0, :, 0] < sel0[0, :, 0]).any()


def test_mass_target_limits(emu):
    """A tiny target keeps the fixed top_k; the full target with every candidate rescored attends every cell
    (also where the tail's shares vanish in f32 sums: a peaked query)."""
    q, k, v, mask, kw = mass_case()
    n_seg = kw["n_seg"]
    for p, n_rescore in ((1e-6, 20), (1.0, n_seg)):
        cpu, out, _ = run_both(emu, q, k, v, mask, n_rescore=n_rescore, mass_target=p, **kw)
        np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    dense = R.dense_attention(dequant(q, F16), dequant(k, F16), dequant(v, F16), mask, 64**-0.5)
    np.testing.assert_allclose(out, dense, atol=5e-4)
    s = emu_summarize(
        emu, k[None], mask[None], seg_len=16, score=R.SCORE_MEANVAR, scale=64**-0.5, n_seg=n_seg
    )
    _, sel = emu_attn(
        emu, 4 * q[None], k[None], v[None], mask[None], s, n_rescore=n_seg, mass_target=1.0, **kw
    )
    assert (sel[0, :, 0] == n_seg).all()


@pytest.mark.parametrize("kt", [F32, F16, Q8_0])
@pytest.mark.parametrize("vt", [F32, F16, Q8_0])
def test_every_kv_type_pair(emu, kt, vt):
    """Every K x V instantiation (attention, ORACLE score, rescore) against the NumPy reference on the values
    the kernel sees."""
    d, seg_len = 64, 16
    q, k, v, mask, used = make_case(40 + kt + 3 * vt, d, 2, n_kv=512, q_scale=1.0)
    n_seg = used // seg_len
    s_type = F16 if kt == vt else F32
    w = R.summary_width(R.SCORE_ORACLE, d)
    s = emu_summarize(emu, k[None], mask[None], seg_len=seg_len, score=R.SCORE_ORACLE, scale=d**-0.5,
                      kv_type=kt, s_type=s_type, n_seg=n_seg)  # fmt: skip
    assert s.shape[-1] == w
    kw = dict(seg_len=seg_len, top_k=4, n_sink=1, n_recent=32, score=R.SCORE_ORACLE, scale=d**-0.5)
    out, _ = emu_attn(emu, q[None], k[None], v[None], mask[None], s, n_seg=n_seg, kv_type=kt, v_type=vt,
                      s_type=s_type, n_rescore=12, **kw)  # fmt: skip
    qq = dequant(q, Q8_0) if kt == Q8_0 else (dequant(q, F16) if kt == F16 else q)
    ref = R.radar_attention(qq, dequant(k, kt), dequant(v, vt), mask, s[0], n_seg, seg_len, 4, 1, 32,
                            R.SCORE_ORACLE, d**-0.5, n_rescore=12)[0]  # fmt: skip
    np.testing.assert_allclose(out[0], ref, atol=1e-4)


@pytest.mark.parametrize("n_rescore", [0, 12])
def test_two_streams_end_to_end(emu, n_rescore):
    """Three streams with their own n_seg (the last with fewer candidates than top_k: it keeps all, in the
    same launch as the others' selection): emulated summaries feed the emulated attention (as on the device),
    each stream equal to the CPU ops on that stream alone."""
    d, n_kv, seg_len = 64, 1024, 32
    cases = [make_case(s, d, 4, n_kv=n_kv) for s in (21, 22, 23)]
    n_segs = [cases[0][4] // seg_len, cases[1][4] // seg_len - 5, 6]
    q, k, v, m = (np.stack([c[i] for c in cases]) for i in range(4))
    kw = dict(seg_len=seg_len, top_k=5, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=d**-0.5)
    s = emu_summarize(emu, k, m, seg_len=seg_len, score=R.SCORE_MEANVAR, scale=d**-0.5, n_seg=n_kv // seg_len)
    out, sel = emu_attn(emu, q, k, v, m, s, n_seg=np.array(n_segs), target_split=0, n_rescore=n_rescore, **kw)
    assert (sel[2, :, 0] == 6).all() and (sel[:2, :, 0] == 6).all()  # 6 segments: all, or 5 + 1 recent
    for i, (q1, k1, v1, m1, _) in enumerate(cases):
        alone, _ = radar_ops(q1, k1, v1, m1, n_seg=n_segs[i], n_rescore=n_rescore, **kw)
        np.testing.assert_allclose(out[i], alone, atol=ATTN_TOL)


def tie_case():
    """Segments 10, 20, 30 hold the same keys (identical summaries, scores and exact scores: a tie by
    construction) that every head prefers, with different values; top_k 2 keeps 10 and 20 (ties to the lower
    index), and the values tell which were attended."""
    rng = np.random.default_rng(5)
    d, hkv, ratio, seg_len, n_kv = 64, 2, 4, 16, 768
    q = rng.normal(size=(hkv * ratio, d))
    k = rng.normal(size=(n_kv, hkv, d)) * 0.3
    v = rng.normal(size=(n_kv, hkv, d))
    mask = np.zeros(n_kv)
    planted = rng.normal(size=(seg_len, hkv, d)) * 0.3
    planted += np.repeat(q.reshape(hkv, ratio, d).mean(axis=1)[None], seg_len, axis=0) * 0.5
    for sg, val in ((10, 3.0), (20, -3.0), (30, 7.0)):
        k[sg * seg_len : (sg + 1) * seg_len] = planted
        v[sg * seg_len : (sg + 1) * seg_len] = val
    return q, k, v, mask, seg_len, n_kv // seg_len


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("n_rescore", [0, 8])
def test_ties_go_to_the_lower_segment(emu, shared, n_rescore):
    q, k, v, mask, seg_len, n_seg = tie_case()
    kw = dict(
        seg_len=seg_len, top_k=2, n_sink=0, n_recent=16, score=R.SCORE_MEANVAR, scale=64**-0.5, n_seg=n_seg
    )
    cpu, out, s = run_both(emu, q, k, v, mask, shared=shared, n_rescore=n_rescore, target_split=1, **kw)
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    # the selection itself: segments 10 and 20, then the recent one
    _, sel = emu_attn(
        emu, q[None], k[None], v[None], mask[None], s[None], **kw, shared=shared, n_rescore=n_rescore
    )
    for row in sel[0]:
        assert row[0] == 3 and sorted(row[1:3].tolist()) == [10, 20] and row[3] == n_seg - 1
    # keeping 30 instead of 20 would show: its values are 7, not -3
    alt = np.array(mask)
    alt[20 * seg_len : 21 * seg_len] = -np.inf
    other, _ = radar_ops(q, k, v, alt, shared=shared, n_rescore=n_rescore, **kw)
    assert np.abs(other - cpu).max() > 0.5


def test_ties_among_empty_segments(emu):
    """More kept segments than segments with valid cells: the empty ones (score -inf, tied) go by index."""
    q, k, v, mask, seg_len, n_seg = tie_case()
    mask[: (n_seg - 1) * seg_len] = -np.inf
    mask[[5 * seg_len + 3, 40 * seg_len + 1]] = 0.0  # segments 5 and 40 hold one valid cell each
    kw = dict(
        seg_len=seg_len, top_k=4, n_sink=0, n_recent=16, score=R.SCORE_MEAN, scale=64**-0.5, n_seg=n_seg
    )
    cpu, out, s = run_both(emu, q, k, v, mask, **kw)
    np.testing.assert_allclose(out, cpu, atol=ATTN_TOL)
    _, sel = emu_attn(emu, q[None], k[None], v[None], mask[None], s[None], **kw)
    for row in sel[0]:
        assert row[0] == 5 and sorted(row[1:5].tolist()) == [0, 1, 5, 40]


# ---- the tests catch broken kernels ----

MUTANTS = {
    # ties to the higher segment index
    "ties": ("rank += vj > vi || (vj == vi && ij < ii);", "rank += vj > vi || (vj == vi && ij > ii);"),
    # a kept segment's cells read from the next segment
    "cells": ("c = kl[1 + j/L]*L + j%L;", "c = (kl[1 + j/L] + 1)*L + j%L;"),
    # UNION: the bound's picks may repeat MEANVAR's
    "union": ("val_b[i] = -FLT_MAX;", "val_b[i] = val_b[i];"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_a_broken_kernel_is_caught(tmp_path, mutant):
    """Compiles the harness with a deliberately broken copy of radar.metal (-DRADAR_METAL_SRC): the
    comparisons above fail on it."""
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++ or c++) to build the Metal emulation harness")
    old, new = MUTANTS[mutant]
    src = KERNEL_SRC.read_text()
    assert src.count(old) == 1
    broken = tmp_path / "radar.metal"
    broken.write_text(src.replace(old, new))
    lib = build_harness(tmp_path / "radar_emu_broken.so", broken)
    with pytest.raises(AssertionError):
        if mutant == "union":
            test_union_matches_cpu(lib, shared=False, n_rescore=24)
        else:
            test_ties_go_to_the_lower_segment(lib, shared=False, n_rescore=0)
