"""The CPU Radar kernels (ggml_radar_summarize, ggml_radar_attn) against the NumPy reference.

Random inputs over head dims 64/128/256, GQA ratios 1/4/6/7/8, f16 and q8_0 K/V, every score,
masks with holes, ALiBi/softcap/sinks, and the exactness limit (top-k >= all segments gives dense
attention) against both the reference and ggml's own flash attention.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_ops import F16, F32, Q8_0, dequant, flash_attn, make_case, radar_ops

from radar_gguf.lab import reference as R

SCORES = [R.SCORE_RF, R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX, R.SCORE_ORACLE, R.SCORE_UNION]


def reference(q, k, v, mask, summaries, n_seg, seg_len, top_k, score, scale, kv_type, selection=False, **kw):
    """NumPy's output for the op's inputs (with ``selection``: also the segments each head kept)."""
    res = R.radar_attention(
        q,
        dequant(k, kv_type),
        dequant(v, kv_type),
        mask,
        summaries.astype(np.float64),
        n_seg,
        seg_len,
        top_k,
        kw.pop("n_sink", 1),
        kw.pop("n_recent", 32),
        score,
        scale,
        **kw,
    )
    return res if selection else res[0]


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("ratio", [1, 4, 6, 7, 8])
@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_meanvar_matches_reference(d, ratio, kv_type):
    q, k, v, mask, used = make_case(d * 10 + ratio, d, ratio)
    seg_len, scale = 32, d**-0.5
    n_seg = used // seg_len
    out, s = radar_ops(
        q,
        k,
        v,
        mask,
        seg_len=seg_len,
        top_k=6,
        n_sink=1,
        n_recent=32,
        score=R.SCORE_MEANVAR,
        scale=scale,
        n_seg=n_seg,
        kv_type=kv_type,
    )
    # summaries: exact statistics of the stored keys
    ref_s = R.summarize(dequant(k, kv_type), np.isfinite(mask), seg_len, n_seg, R.SCORE_MEANVAR, scale)
    np.testing.assert_allclose(s, ref_s, atol=2e-5, rtol=1e-5)
    ref = reference(q, k, v, mask, s, n_seg, seg_len, 6, R.SCORE_MEANVAR, scale, kv_type)
    # f16 K: the kernel rounds q to f16 for the dot products; q8_0 K: to q8_0
    tol = 2e-3 if kv_type == F16 else 4e-2
    np.testing.assert_allclose(out, ref, atol=tol)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("shared", [False, True])
def test_every_score_matches_reference(score, shared):
    d = 64
    q, k, v, mask, used = make_case(7 + score, d, 7)
    seg_len, scale = 27, d**-0.5
    n_seg = used // seg_len
    omega = R.make_omega(d, 4 * d, seed=3) if score == R.SCORE_RF else None
    out, s = radar_ops(
        q,
        k,
        v,
        mask,
        seg_len=seg_len,
        top_k=8,
        n_sink=4,
        n_recent=40,
        score=score,
        scale=scale,
        n_seg=n_seg,
        omega=omega,
        shared=shared,
    )
    ref_s = R.summarize(dequant(k, F16), np.isfinite(mask), seg_len, n_seg, score, scale, omega=omega)
    np.testing.assert_allclose(s, ref_s, atol=1e-4, rtol=1e-4)
    ref = reference(
        q,
        k,
        v,
        mask,
        s,
        n_seg,
        seg_len,
        8,
        score,
        scale,
        F16,
        n_sink=4,
        n_recent=40,
        omega=omega,
        shared=shared,
    )
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_softcap_alibi_sinks_match_reference():
    d = 128
    q, k, v, mask, used = make_case(11, d, 4)
    mask = np.where(np.isfinite(mask), -np.abs(np.arange(len(mask)) - used) * 1.0, -np.inf)  # ALiBi distances
    sinks = np.linspace(-1, 2, 8)
    seg_len, scale = 32, d**-0.5
    n_seg = used // seg_len
    out, s = radar_ops(
        q,
        k,
        v,
        mask,
        seg_len=seg_len,
        top_k=10,
        n_sink=1,
        n_recent=32,
        score=R.SCORE_MEANVAR,
        scale=scale,
        n_seg=n_seg,
        softcap=20.0,
        max_bias=8.0,
        sinks=sinks,
    )
    ref = reference(
        q,
        k,
        v,
        mask,
        s,
        n_seg,
        seg_len,
        10,
        R.SCORE_MEANVAR,
        scale,
        F16,
        softcap=20.0,
        max_bias=8.0,
        sinks=sinks,
    )
    np.testing.assert_allclose(out, ref, atol=2e-3)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_all_segments_is_dense(score, kv_type):
    """top-k >= number of segments: Radar is dense attention (vs NumPy and vs ggml flash attention)."""
    d = 64
    q, k, v, mask, used = make_case(5, d, 7, n_kv=3072)
    scale = d**-0.5
    omega = R.make_omega(d, 2 * d, seed=1) if score == R.SCORE_RF else None
    out, _ = radar_ops(
        q,
        k,
        v,
        mask,
        seg_len=27,
        top_k=10_000,
        n_sink=1,
        n_recent=32,
        score=score,
        scale=scale,
        n_seg=used // 27,
        omega=omega,
        kv_type=kv_type,
    )
    qq = dequant(q, Q8_0) if kv_type == Q8_0 else q  # the kernel's q8_0 dot products quantize q too
    dense = R.dense_attention(qq, dequant(k, kv_type), dequant(v, kv_type), mask, scale)
    np.testing.assert_allclose(out, dense, atol=5e-4 if kv_type == F16 else 2e-3)
    # ggml's flash attention accumulates V in f16 on the CPU: agree to its own precision
    fa = flash_attn(q, k, v, mask, scale=scale, kv_type=kv_type)
    assert np.abs(out - fa).max() < 1e-2


def f16_saturated(x):
    """What an f16 summary holds: the value rounded to f16, clamped to +-65504 instead of inf."""
    return np.clip(x, -65504, 65504).astype(np.float16).astype(np.float64)


@pytest.mark.parametrize("score", [R.SCORE_RF, R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX])
@pytest.mark.parametrize("shared", [False, True])
def test_f16_summaries_match_reference(score, shared):
    """summary_type f16: the stored summaries are the reference's rounded to f16, the selection is
    the reference's on those, and it is (nearly always) the selection of f32 summaries."""
    d = 64
    q, k, v, mask, used = make_case(31 + score, d, 7)
    seg_len, scale = 27, d**-0.5
    n_seg = used // seg_len
    omega = R.make_omega(d, 4 * d, seed=3) if score == R.SCORE_RF else None
    sel = dict(n_sink=4, n_recent=40, omega=omega, shared=shared)
    kw = dict(seg_len=seg_len, top_k=8, score=score, scale=scale, n_seg=n_seg, **sel)
    out, s = radar_ops(q, k, v, mask, s_type=F16, **kw)
    ref_s = R.summarize(dequant(k, F16), np.isfinite(mask), seg_len, n_seg, score, scale, omega=omega)
    np.testing.assert_allclose(s, f16_saturated(ref_s), rtol=1e-3, atol=1e-6)
    ref = reference(q, k, v, mask, s, n_seg, seg_len, 8, score, scale, F16, **sel)
    np.testing.assert_allclose(out, ref, atol=2e-3)
    out32, _ = radar_ops(q, k, v, mask, **kw)
    same = np.abs(out - out32).max(axis=1) < 2e-3  # per query head
    assert same.mean() >= 0.9, same


def test_f16_summaries_saturate():
    """Keys whose variance overflows f16: the summary saturates at 65504 (no inf, no NaN score) and
    that segment is still the one selected."""
    d, seg_len = 64, 64
    q, k, v, mask, used = make_case(3, d, 4, n_kv=1024, holes=False)
    k[3 * seg_len : 4 * seg_len] *= 300.0  # variance ~9e4 in segment 3
    v[3 * seg_len : 4 * seg_len] = 7.0
    kw = dict(seg_len=seg_len, top_k=1, n_sink=1, n_recent=64, score=R.SCORE_MEANVAR, scale=d**-0.5)
    out, s = radar_ops(q, k, v, mask, s_type=F16, **kw)
    assert np.isfinite(s).all() and s.max() == 65504.0
    assert np.isfinite(out).all()
    ref = reference(q, k, v, mask, s, used // seg_len, seg_len, 1, R.SCORE_MEANVAR, d**-0.5, F16, n_recent=64)
    np.testing.assert_allclose(out, ref, atol=2e-3)
    assert (out.mean(axis=1) > 3.0).all()  # every head attends the huge keys' segment (values 7)


def test_planted_key_found_far_back():
    """A small budget still finds a key that matches the query, 7000 tokens back."""
    rng = np.random.default_rng(1)
    n_kv, d, hkv = 8192, 64, 1
    k = rng.normal(size=(n_kv, hkv, d))
    v = rng.normal(size=(n_kv, hkv, d)) * 0.1
    q = rng.normal(size=(1, d))
    q *= 8 / np.linalg.norm(q)
    far = 1000
    k[far, 0] = q[0] * 4.0  # logit 32: a key the query clearly asks for
    v[far, 0] = 5.0  # what attention reads back when it finds the key
    mask = np.zeros(n_kv)
    for score in (R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX, R.SCORE_ORACLE):
        out, _ = radar_ops(
            q, k, v, mask, seg_len=64, top_k=4, n_sink=1, n_recent=64, score=score, scale=d**-0.5
        )
        assert out.mean() > 2.0, f"score {score}: the planted key's segment was not selected"
    # and without it (segment not selected) the output is near zero: the test can fail
    out, _ = radar_ops(
        q, k, v, mask, seg_len=64, top_k=0, n_sink=1, n_recent=64, score=R.SCORE_MEANVAR, scale=d**-0.5
    )
    assert abs(out.mean()) < 0.5


def test_two_streams_independent():
    """Each stream selects from its own segments; results equal each stream run alone."""
    from ggml_ops import F32, I32, Graph, libs

    d, hkv, hq, n_kv, seg_len = 64, 2, 8, 1024, 32
    cases = [make_case(s, d, 4, n_kv=n_kv) for s in (21, 22)]
    scale = d**-0.5
    base = libs()[0]
    w = R.summary_width(R.SCORE_MEANVAR, d)
    with Graph() as g:
        q = np.stack([c[0] for c in cases])  # [ns, Hq, D]
        k = np.stack([c[1] for c in cases])
        v = np.stack([c[2] for c in cases])
        m = np.stack([c[3] for c in cases])
        n_segs = [c[4] // seg_len for c in cases]
        tq = g.tensor(q.reshape(2, hq, 1, d))
        tk = g.tensor(k, F16)  # [D, Hkv, n_kv, 2]
        tv = g.tensor(v, F16)
        tm = g.tensor(m.reshape(2, 1, 1, n_kv), F16)
        ts = g.tensor(np.zeros((2, n_kv // seg_len, hkv, w)), F32)
        ids = g.tensor(np.stack([np.arange(n_kv // seg_len)] * 2), I32)
        info = g.tensor(np.array([[n_segs[0], 0], [n_segs[1], 0]]), I32)
        su = base.ggml_radar_summarize(g.ctx, ts, tk, tm, ids, None, R.SCORE_MEANVAR, seg_len, scale)
        out = base.ggml_radar_attn(
            g.ctx,
            tq,
            g.permute(tk, 0, 2, 1, 3),
            g.permute(tv, 0, 2, 1, 3),
            tm,
            su,
            info,
            None,
            R.SCORE_MEANVAR,
            seg_len,
            5,
            1,
            32,
            False,
            scale,
            0.0,
            0.0,
        )
        g.compute(out)
        both = g.read(out, (2, hq, d))
    for i, (q1, k1, v1, m1, used) in enumerate(cases):
        alone, _ = radar_ops(
            q1,
            k1,
            v1,
            m1,
            seg_len=seg_len,
            top_k=5,
            n_sink=1,
            n_recent=32,
            score=R.SCORE_MEANVAR,
            scale=scale,
            n_seg=used // seg_len,
        )
        np.testing.assert_allclose(both[i], alone, atol=1e-6)


def _rescore_margin(q, k, mask, seg_len, n_seg, top_k, n_rescore, scale, n_sink, n_recent, shared):
    """Smallest gap, over heads, between the exact scores of the last kept and the first dropped candidate
    of the reference's two-stage selection: the kernel rounds q for its dot products, so a test case must
    not hinge on a near-tie."""
    s = R.summarize(k, np.isfinite(mask), seg_len, n_seg, R.SCORE_MEANVAR, scale)
    n_cand = n_seg - min(n_seg, -(-n_recent // seg_len))
    sc = R.segment_scores(q, s[:n_cand], R.SCORE_MEANVAR, scale)
    g = q.shape[0] // k.shape[1]
    if shared:
        sc = R._share_scores(sc, g)
    cand = np.argsort(-sc, axis=1, kind="stable")[:, :n_rescore]
    logits = R._logits(q, k, R._as_mask(mask), scale, 0.0, 0.0)
    ex = -np.sort(-R.rescore_scores(cand, logits, seg_len, n_sink, shared, g), axis=1)
    return float((ex[:, top_k - 1] - ex[:, top_k]).min())


@pytest.mark.parametrize("shared", [False, True])
def test_union_candidates_match_reference(shared):
    """UNION: stage two rescores half its candidates by meanvar and the rest by minmax; the output is the
    reference's, and it differs from what either score alone selects (a kernel that took all candidates from
    one score would fail)."""
    d = 64
    q, k, v, mask, used = make_case(65, d, 4, q_scale=4.0)
    seg_len, scale, top_k, n_rescore = 16, d**-0.5, 6, 24
    n_seg = used // seg_len
    kw = dict(seg_len=seg_len, top_k=top_k, n_sink=1, n_recent=32, scale=scale, n_seg=n_seg, shared=shared)
    out, s = radar_ops(q, k, v, mask, score=R.SCORE_UNION, n_rescore=n_rescore, **kw)
    ref_s = R.summarize(dequant(k, F16), np.isfinite(mask), seg_len, n_seg, R.SCORE_UNION, scale)
    np.testing.assert_allclose(s, ref_s, atol=1e-4, rtol=1e-4)
    ref, sel = R.radar_attention(
        q, dequant(k, F16), dequant(v, F16), mask, s.astype(np.float64), n_seg, seg_len, top_k, 1, 32,
        R.SCORE_UNION, scale, shared=shared, n_rescore=n_rescore,
    )  # fmt: skip
    # q is rounded to f16 for the dot products, and logits reach ~20 here (q_scale 4): 5e-3
    np.testing.assert_allclose(out, ref, atol=5e-3)
    for alone in (R.SCORE_MEANVAR, R.SCORE_MINMAX):
        one, _ = radar_ops(q, k, v, mask, score=alone, n_rescore=n_rescore, **kw)
        assert np.abs(one - ref).max() > 5e-2, R.SCORE_NAMES[alone]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_rescore_matches_reference(shared, kv_type):
    """Two-stage selection: the 24 best segments by summary, rescored exactly, the best 6 kept."""
    d = 64
    q, k, v, mask, used = make_case(65, d, 4, q_scale=4.0)  # a seed with no near-tie (margin > 0.08)
    seg_len, scale, top_k, n_rescore = 16, d**-0.5, 6, 24
    n_seg = used // seg_len
    kd, vd = dequant(k, kv_type), dequant(v, kv_type)
    margin = _rescore_margin(q, kd, mask, seg_len, n_seg, top_k, n_rescore, scale, 1, 32, shared)
    assert margin > 0.05, f"the case has a near-tie at the threshold ({margin:.4f}): pick another seed"
    kw = dict(seg_len=seg_len, top_k=top_k, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=scale)
    out, s = radar_ops(q, k, v, mask, n_seg=n_seg, shared=shared, kv_type=kv_type, n_rescore=n_rescore, **kw)
    ref = R.radar_attention(
        q,
        kd,
        vd,
        mask,
        s.astype(np.float64),
        n_seg,
        seg_len,
        top_k,
        1,
        32,
        R.SCORE_MEANVAR,
        scale,
        shared=shared,
        n_rescore=n_rescore,
    )[0]
    tol = 2e-3 if kv_type == F16 else 8e-2  # q8_0: q rounded to q8_0, logits up to ~20 with q_scale 4
    np.testing.assert_allclose(out, ref, atol=tol)
    # the second stage changed the selection: a kernel that ignored it would fail the comparison above
    one, _ = radar_ops(q, k, v, mask, n_seg=n_seg, shared=shared, kv_type=kv_type, **kw)
    assert np.abs(one - ref).max() > 10 * tol


@pytest.mark.parametrize("n_sink", [16, 17, 40])
def test_two_stages_with_more_sinks_than_a_segment(n_sink):
    """More sinks than a segment holds, every candidate rescored: a segment wholly inside the sinks has no
    cell of its own to score (an empty range; it once read a negative count: wrong output from 17 sinks
    on, NaN at 40). As the reference, whatever the sinks cover."""
    d = 64
    q, k, v, mask, used = make_case(8, d, 4, n_kv=1024)
    seg_len, n_seg, scale = 16, used // 16, d**-0.5
    kw = dict(seg_len=seg_len, top_k=4, n_sink=n_sink, n_recent=32, score=R.SCORE_MEANVAR, scale=scale)
    out, s = radar_ops(q, k, v, mask, n_seg=n_seg, n_rescore=n_seg, **kw)
    ref = R.radar_attention(
        q, dequant(k, F16), dequant(v, F16), mask, s.astype(np.float64), n_seg, seg_len, 4, n_sink, 32,
        R.SCORE_MEANVAR, scale, n_rescore=n_seg,
    )[0]  # fmt: skip
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_rescore_all_candidates_is_the_oracle():
    """Rescoring every candidate with no sinks ranks by exact attention mass: the ORACLE score's choice."""
    d = 64
    q, k, v, mask, used = make_case(5, d, 4)
    seg_len, n_seg = 16, used // 16
    kw = dict(seg_len=seg_len, top_k=5, n_sink=0, n_recent=32, scale=d**-0.5, n_seg=n_seg)
    two, _ = radar_ops(q, k, v, mask, score=R.SCORE_MEANVAR, n_rescore=n_seg, **kw)
    oracle, _ = radar_ops(q, k, v, mask, score=R.SCORE_ORACLE, **kw)
    np.testing.assert_allclose(two, oracle, atol=1e-5)
    one, _ = radar_ops(q, k, v, mask, score=R.SCORE_MEANVAR, **kw)
    assert np.abs(one - oracle).max() > 1e-2  # meanvar alone picks otherwise: the comparison can fail


def _mass_case(shared, p, n_rescore):
    """The reference's mass-target selection on a fixed case: (q, k, v, mask, n_seg, kept counts, margin).
    The margin is the smallest log-share gap, over heads, between the last kept and the first dropped
    candidate: the kernel computes in f32, so a case must not hinge on a near-tie."""
    d, seg_len, top_k = 64, 16, 6
    q, k, v, mask, used = make_case(62, d, 4, q_scale=3.0)
    n_seg = used // seg_len
    kd = k
    scale = d**-0.5
    s = R.summarize(kd, np.isfinite(mask), seg_len, n_seg, R.SCORE_MEANVAR, scale)
    n_cand = n_seg - 2
    g = q.shape[0] // k.shape[1]
    sc = R.segment_scores(q, s[:n_cand], R.SCORE_MEANVAR, scale)
    if shared:
        sc = R._share_scores(sc, g)
    cand = np.argsort(-sc, axis=1, kind="stable")[:, :n_rescore]
    logits = R._logits(q, kd, R._as_mask(mask), scale, 0.0, 0.0)
    always = np.zeros(len(mask), dtype=bool)
    always[:1] = True
    always[n_cand * seg_len :] = True
    _, keep, share = R.mass_target_select(cand, logits, always, seg_len, 1, shared, g, top_k, p)
    lg = np.log(share)
    margin = min(lg[h, c - 1] - lg[h, c] for h, c in enumerate(keep) if c < share.shape[1])
    return q, k, v, mask, n_seg, keep, float(margin)


@pytest.mark.parametrize("shared", [False, True])
def test_mass_target_matches_reference(shared):
    """Adaptive budget: past the 6 best of 24 rescored candidates, more are kept until the share 0.7 is
    reached; the kernel keeps the reference's segments, a different number per head. f32 K/V: the count
    hinges on sums of shares, which f16's rounding of q would move by more than this case's margins (the
    rounding itself is covered by the two-stage tests)."""
    p, n_rescore, top_k, seg_len, kv_type = 0.7, 24, 6, 16, F32
    q, k, v, mask, n_seg, keep, margin = _mass_case(shared, p, n_rescore)
    assert margin > 0.01, f"near-tie at the cut ({margin:.2e}): pick another case"
    assert keep.min() >= top_k and keep.max() > top_k and len(set(keep.tolist())) > 1  # the case adapts
    # the decision is not near the target: the counts hold for p +- 0.002
    for dp in (-0.002, 0.002):
        assert np.array_equal(_mass_case(shared, p + dp, n_rescore)[5], keep)
    kw = dict(seg_len=seg_len, top_k=top_k, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=64**-0.5)
    out, s = radar_ops(
        q, k, v, mask, n_seg=n_seg, shared=shared, kv_type=kv_type, n_rescore=n_rescore, mass_target=p, **kw
    )
    ref, sel = reference(
        q,
        k,
        v,
        mask,
        s,
        n_seg,
        seg_len,
        top_k,
        R.SCORE_MEANVAR,
        64**-0.5,
        kv_type,
        selection=True,
        shared=shared,
        n_rescore=n_rescore,
        mass_target=p,
    )
    assert [len(x) - 2 for x in sel] == keep.tolist()
    tol = 1e-4
    np.testing.assert_allclose(out, ref, atol=tol)
    # the fixed budget attends less: a kernel that ignored the target would fail the comparison above
    fixed, _ = radar_ops(
        q, k, v, mask, n_seg=n_seg, shared=shared, kv_type=kv_type, n_rescore=n_rescore, **kw
    )
    assert np.abs(fixed - ref).max() > 10 * tol


def test_mass_target_limits():
    """A tiny target keeps the fixed top_k; the full target with every candidate rescored attends every
    cell: dense attention (the exactness limit)."""
    d = 64
    q, k, v, mask, used = make_case(7, d, 4)
    seg_len, n_seg = 16, used // 16
    kw = dict(
        seg_len=seg_len, top_k=5, n_sink=1, n_recent=32, scale=d**-0.5, n_seg=n_seg, score=R.SCORE_MEANVAR
    )
    fixed, _ = radar_ops(q, k, v, mask, n_rescore=20, **kw)
    tiny, _ = radar_ops(q, k, v, mask, n_rescore=20, mass_target=1e-6, **kw)
    np.testing.assert_allclose(tiny, fixed, atol=1e-6)
    full, _ = radar_ops(q, k, v, mask, n_rescore=n_seg, mass_target=1.0, **kw)
    dense = R.dense_attention(q, dequant(k, F16), dequant(v, F16), mask, d**-0.5)
    np.testing.assert_allclose(full, dense, atol=2e-3)
    every, _ = radar_ops(q, k, v, mask, **{**kw, "top_k": n_seg})  # the same cells through the same kernel
    np.testing.assert_array_equal(full, every)
    assert np.abs(fixed - dense).max() > 2e-2  # the fixed budget is not dense on this case


def _adaptive_counts(q, k, mask, n_seg, seg_len, p, lo, hi):
    """The reference's adaptive candidate counts per head ([Hq], between lo and hi) on the op's inputs."""
    d = k.shape[2]
    scale = d**-0.5
    s = R.summarize(k, np.isfinite(mask), seg_len, n_seg, R.SCORE_MEANVAR, scale)
    n_cand = n_seg - 2  # the 32-cell window: two segments of 16
    sc = R.segment_scores(q, s[:n_cand], R.SCORE_MEANVAR, scale)
    order = np.argsort(-sc, axis=1, kind="stable")
    logits = R._logits(q, k, R._as_mask(mask), scale, 0.0, 0.0)
    always = np.zeros(len(mask), dtype=bool)
    always[:1] = True
    always[n_cand * seg_len :] = True
    al = R._logsumexp(np.where(always[None, :], logits, -np.inf), axis=1)
    return np.clip(R.estimated_need(np.take_along_axis(sc, order, axis=1), al, seg_len, p), lo, hi)


@pytest.mark.parametrize("mass", [0.0, 1.0])
def test_adaptive_rescore_matches_reference(mass):
    """Adaptive candidate count: each head rescores its best segments until their estimated share of the mass
    reaches p, between 12 and 48 candidates; the kernel attends what the reference does, with a count that
    differs between heads (stage two keeps the top 6 by exact score, or with mass 1 every rescored one).
    f32 K/V: the counts hinge on sums of estimates; the case is checked not to sit near a count's edge."""
    p, lo, hi, top_k, seg_len, kv_type = 0.5, 12, 48, 6, 16, F32
    q, k, v, mask, used = make_case(63, 64, 4, q_scale=3.0)
    n_seg = used // seg_len
    counts = _adaptive_counts(q, k, mask, n_seg, seg_len, p, lo, hi)
    assert len(set(counts.tolist())) > 1 and counts.max() > lo, counts  # the case adapts
    for dp in (-1e-4, 1e-4):  # f32 estimates move a share by ~1e-6: the counts hold well beyond that
        assert np.array_equal(_adaptive_counts(q, k, mask, n_seg, seg_len, p + dp, lo, hi), counts)
    kw = dict(seg_len=seg_len, top_k=top_k, n_sink=1, n_recent=32, score=R.SCORE_MEANVAR, scale=64**-0.5)
    two = dict(n_rescore=lo, mass_target=mass)
    out, s = radar_ops(
        q, k, v, mask, n_seg=n_seg, kv_type=kv_type, rescore_max=hi, rescore_mass=p, **two, **kw
    )
    ref = reference(
        q, k, v, mask, s, n_seg, seg_len, top_k, R.SCORE_MEANVAR, 64**-0.5, kv_type,
        rescore_max=hi, rescore_mass=p, **two,
    )  # fmt: skip
    tol = 1e-4
    np.testing.assert_allclose(out, ref, atol=tol)
    if mass == 1.0:
        # every rescored candidate is attended: a kernel that kept the floor's count would fail above
        floor, _ = radar_ops(q, k, v, mask, n_seg=n_seg, kv_type=kv_type, **two, **kw)
        assert np.abs(floor - ref).max() > 10 * tol


def test_adaptive_rescore_limits():
    """p = 1 rescores the ceiling (the same output as a fixed count of 48); a tiny p the floor (12)."""
    seg_len, lo, hi = 16, 12, 48
    q, k, v, mask, used = make_case(64, 64, 4)
    kw = dict(
        seg_len=seg_len,
        top_k=6,
        n_sink=1,
        n_recent=32,
        score=R.SCORE_MEANVAR,
        scale=64**-0.5,
        n_seg=used // seg_len,
        mass_target=1.0,  # every rescored candidate attended: the outputs differ by the count alone
    )
    ceil, _ = radar_ops(q, k, v, mask, n_rescore=lo, rescore_max=hi, rescore_mass=1.0, **kw)
    fixed_hi, _ = radar_ops(q, k, v, mask, n_rescore=hi, **kw)
    np.testing.assert_allclose(ceil, fixed_hi, atol=1e-5)
    tiny, _ = radar_ops(q, k, v, mask, n_rescore=lo, rescore_max=hi, rescore_mass=1e-6, **kw)
    fixed_lo, _ = radar_ops(q, k, v, mask, n_rescore=lo, **kw)
    np.testing.assert_allclose(tiny, fixed_lo, atol=1e-5)
    assert np.abs(fixed_hi - fixed_lo).max() > 1e-3  # the two limits differ on this case
