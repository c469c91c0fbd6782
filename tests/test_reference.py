"""Tests of the NumPy reference of the Radar ops (radar_gguf/reference.py) against docs/radar-ops.md."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radar_gguf.lab import reference as R

ALL_SCORES = [R.SCORE_RF, R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX, R.SCORE_ORACLE]


def _omega_for(score: int, d: int, m: int = 16, seed: int = 0):
    return R.make_omega(d, m, seed) if score == R.SCORE_RF else None


def _rand_case(rng, n_kv, hkv, g, d, dv=None, key_std=1.0):
    dv = d if dv is None else dv
    q = rng.standard_normal((hkv * g, d)).astype(np.float32)  # q: [Hq, D]
    k = (rng.standard_normal((n_kv, hkv, d)) * key_std).astype(np.float32)  # k: [n_kv, Hkv, D]
    v = rng.standard_normal((n_kv, hkv, dv)).astype(np.float32)  # v: [n_kv, Hkv, Dv]
    return q, k, v


def _holey_mask(rng, n_kv, p_hole=0.2, alibi=False):
    """Float KQ mask [n_kv]: -inf holes, 0 (or an ALiBi distance) elsewhere; the last cell is valid."""
    mask = np.zeros(n_kv, dtype=np.float32)
    if alibi:
        mask = -np.abs(np.arange(n_kv, dtype=np.float32) - (n_kv - 1))
    mask[rng.random(n_kv) < p_hole] = -np.inf
    mask[-1] = 0.0
    return mask


# ----------------------------------------------------------------------------------------------------
# helpers and small functions


def test_summary_width_and_seg_len():
    assert R.summary_width(R.SCORE_MEAN, 128) == 257
    assert R.summary_width(R.SCORE_MEANVAR, 64) == 129
    assert R.summary_width(R.SCORE_MINMAX, 64) == 129
    assert R.summary_width(R.SCORE_RF, 64, 1024) == 2049
    assert R.summary_width(R.SCORE_ORACLE, 64) == 1
    assert R.seg_len_for(4096, 2, 16) == 32
    assert R.seg_len_for(100, 2, 16) == 16
    assert R.seg_len_for(131072, 3, 16) == int(math.sqrt(131072) / 3)
    om = R.make_omega(8, 5, 3)
    assert om.shape == (8, 5) and om.dtype == np.float32
    np.testing.assert_array_equal(om, R.make_omega(8, 5, 3))


@pytest.mark.parametrize("n_head", [1, 4, 8, 12, 14, 32])
def test_alibi_slopes_match_ggml(n_head):
    max_bias = 8.0
    n_head_log2 = 2 ** int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_head_log2)
    m1 = 2.0 ** (-max_bias / 2.0 / n_head_log2)
    want = [m0 ** (h + 1) if h < n_head_log2 else m1 ** (2 * (h - n_head_log2) + 1) for h in range(n_head)]
    np.testing.assert_allclose(R.alibi_slopes(n_head, max_bias), want, rtol=1e-15)
    np.testing.assert_array_equal(R.alibi_slopes(n_head, 0.0), np.ones(n_head))


@pytest.mark.parametrize(
    "softcap,max_bias,use_sinks", [(0.0, 0.0, False), (2.0, 0.0, False), (0.0, 8.0, True)]
)
def test_dense_attention_matches_naive(softcap, max_bias, use_sinks):
    rng = np.random.default_rng(0)
    hkv, g = 2, 3
    q, k, v = _rand_case(rng, 50, hkv, g, 16, 24)
    mask = _holey_mask(rng, 50, alibi=max_bias > 0)
    sinks = rng.standard_normal(hkv * g).astype(np.float32) + 2.0 if use_sinks else None
    scale = 0.3
    out = R.dense_attention(q, k, v, mask, scale, softcap=softcap, max_bias=max_bias, sinks=sinks)
    assert out.dtype == np.float32 and out.shape == (6, 24)
    slopes = R.alibi_slopes(hkv * g, max_bias)
    for h in range(hkv * g):
        lg = scale * (k[:, h // g].astype(np.float64) @ q[h].astype(np.float64))
        if softcap:
            lg = softcap * np.tanh(lg / softcap)
        lg = lg + slopes[h] * mask
        w = np.exp(lg)  # small logits: no max subtraction needed
        den = w.sum() + (math.exp(sinks[h]) if use_sinks else 0.0)
        np.testing.assert_allclose(out[h], w @ v[:, h // g] / den, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# exactness: top_k >= n_seg is dense attention


@pytest.mark.parametrize("score", ALL_SCORES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("g", [1, 4, 7])
def test_exact_when_all_segments_kept(score, d, g):
    rng = np.random.default_rng(1000 * d + 10 * g + score)
    hkv, n_kv, seg_len = 2, 203, 16  # 12 segments + an 11-cell tail
    n_seg = n_kv // seg_len
    q, k, v = _rand_case(rng, n_kv, hkv, g, d, dv=d // 2)
    scale = 1.0 / math.sqrt(d)
    omega = _omega_for(score, d)
    variants = [
        dict(),
        dict(softcap=2.0),
        dict(max_bias=8.0, alibi=True),
        dict(sinks=True),
        dict(softcap=1.5, max_bias=4.0, alibi=True, sinks=True),
    ]
    for var in variants:
        mask = _holey_mask(rng, n_kv, alibi=var.get("alibi", False))
        mask[2 * seg_len : 3 * seg_len] = -np.inf  # an empty segment
        sinks = rng.standard_normal(hkv * g).astype(np.float32) if var.get("sinks") else None
        kw = dict(softcap=var.get("softcap", 0.0), max_bias=var.get("max_bias", 0.0), sinks=sinks)
        summ = R.summarize(k, np.isfinite(mask), seg_len, n_seg, score, scale, omega)
        want = R.dense_attention(q, k, v, mask, scale, **kw)
        for top_k, n_sink, n_recent, shared in [(n_seg, 0, 0, False), (n_seg + 5, 1, 40, True)]:
            out, sel = R.radar_attention(
                q, k, v, mask, summ, n_seg, seg_len, top_k, n_sink, n_recent, score, scale, omega,
                shared=shared, **kw,
            )  # fmt: skip
            assert out.dtype == np.float32 and out.shape == want.shape
            np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
            for s in sel:
                np.testing.assert_array_equal(s, np.arange(n_seg))


@pytest.mark.parametrize("score", ALL_SCORES)
@pytest.mark.parametrize("shared", [False, True])
def test_exact_when_only_empty_segments_dropped(score, shared):
    """Scoring path: every segment but the empty ones fits in top_k, empty ones score -inf -> dense."""
    rng = np.random.default_rng(7 + score)
    hkv, g, d, n_kv, seg_len = 2, 4, 64, 16 * 10 + 5, 16
    n_seg = n_kv // seg_len
    q, k, v = _rand_case(rng, n_kv, hkv, g, d)
    mask = _holey_mask(rng, n_kv, alibi=True)
    empty = [1, 4, 6]
    for s in empty:
        mask[s * seg_len : (s + 1) * seg_len] = -np.inf
    scale = 1.0 / math.sqrt(d)
    omega = _omega_for(score, d)
    summ = R.summarize(k, np.isfinite(mask), seg_len, n_seg, score, scale, omega)
    for s in empty:
        np.testing.assert_array_equal(summ[s], 0.0)
    kw = dict(softcap=3.0, max_bias=8.0, sinks=np.full(hkv * g, 0.5, np.float32))
    top_k = n_seg - len(empty)
    args = (q, k, v, mask, summ, n_seg, seg_len, top_k, 0, 0, score, scale, omega)
    out, sel = R.radar_attention(*args, shared=shared, **kw)
    np.testing.assert_allclose(out, R.dense_attention(q, k, v, mask, scale, **kw), rtol=0, atol=1e-6)
    keep = [s for s in range(n_seg) if s not in empty]
    for s in sel:
        np.testing.assert_array_equal(s, keep)


# ----------------------------------------------------------------------------------------------------
# selection behaviour


def test_attended_cells_are_sink_kept_recent_tail():
    """Step 3: the output is dense attention restricted to sinks U kept U recent segments U tail."""
    rng = np.random.default_rng(3)
    hkv, g, d, seg_len, n_kv = 1, 2, 32, 8, 8 * 20 + 3
    n_seg = n_kv // seg_len
    q, k, v = _rand_case(rng, n_kv, hkv, g, d)
    mask = _holey_mask(rng, n_kv, p_hole=0.1)
    scale = 1.0 / math.sqrt(d)
    summ = R.summarize(k, np.isfinite(mask), seg_len, n_seg, R.SCORE_MEANVAR, scale)
    out, sel = R.radar_attention(q, k, v, mask, summ, n_seg, seg_len, 3, 2, 20, R.SCORE_MEANVAR, scale)
    n_rec = math.ceil(20 / seg_len)
    for h in range(hkv * g):
        assert len(sel[h]) == 3 + n_rec
        assert list(sel[h][-n_rec:]) == list(range(n_seg - n_rec, n_seg))
        att = np.zeros(n_kv, bool)
        att[:2] = True
        att[n_seg * seg_len :] = True
        for s in sel[h]:
            att[s * seg_len : (s + 1) * seg_len] = True
        sub = np.where(att, mask, -np.inf)
        kv = slice(h // g, h // g + 1)
        want = R.dense_attention(q[h : h + 1], k[:, kv], v[:, kv], sub, scale)
        np.testing.assert_allclose(out[h], want[0], rtol=0, atol=1e-6)


def test_ties_go_to_lower_index():
    rng = np.random.default_rng(4)
    d, seg_len, n_seg = 16, 4, 10
    seg = rng.standard_normal((seg_len, 1, d)).astype(np.float32)
    k = np.tile(seg, (n_seg, 1, 1))  # every segment identical -> identical scores
    v = rng.standard_normal((n_seg * seg_len, 1, d)).astype(np.float32)
    q = rng.standard_normal((2, d)).astype(np.float32)
    valid = np.ones(n_seg * seg_len, bool)
    for score in ALL_SCORES:
        omega = _omega_for(score, d)
        _, sel = R.radar_attention(
            q, k, v, valid, None, n_seg, seg_len, 3, 0, 0, score, 0.25, omega, shared=score % 2 == 0
        )
        for s in sel:
            np.testing.assert_array_equal(s, [0, 1, 2])


def test_no_valid_cell_gives_zeros():
    rng = np.random.default_rng(5)
    q, k, v = _rand_case(rng, 40, 1, 2, 16)
    mask = np.full(40, -np.inf, np.float32)
    sinks = np.ones(2, np.float32)
    out, _ = R.radar_attention(q, k, v, mask, None, 4, 8, 2, 1, 8, R.SCORE_MEAN, 0.25, sinks=sinks)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(R.dense_attention(q, k, v, mask, 0.25, sinks=sinks), 0.0)


@pytest.mark.parametrize("score", ALL_SCORES)
def test_shared_selection_is_per_group(score):
    rng = np.random.default_rng(6)
    hkv, g, d, seg_len, n_kv = 3, 4, 32, 8, 8 * 30
    n_seg = n_kv // seg_len
    q, k, v = _rand_case(rng, n_kv, hkv, g, d)
    mask = _holey_mask(rng, n_kv)
    scale = 1.0 / math.sqrt(d)
    omega = _omega_for(score, d)
    summ = R.summarize(k, np.isfinite(mask), seg_len, n_seg, score, scale, omega)
    args = (q, k, v, mask, summ, n_seg, seg_len, 5, 1, 8, score, scale, omega)
    _, sel_sh = R.radar_attention(*args, shared=True)
    _, sel_ind = R.radar_attention(*args, shared=False)
    for grp in range(hkv):
        heads = range(grp * g, (grp + 1) * g)
        for h in heads:
            np.testing.assert_array_equal(sel_sh[h], sel_sh[grp * g])
        # per-head selection does differ within a group on random data (so the test has teeth)
        assert any(not np.array_equal(sel_ind[h], sel_ind[grp * g]) for h in heads)

    # the shared score by hand: logsumexp over the group of per-head normalised scores
    lg = R._logits(q.astype(np.float64), k.astype(np.float64), mask.astype(np.float64), scale, 0.0, 0.0)
    n_cand = n_seg - 1
    sc = R.segment_scores(q, summ[:n_cand], score, scale, omega, lg, seg_len)  # [Hq, n_cand]
    norm = sc - np.log(np.exp(sc - sc.max(1, keepdims=True)).sum(1, keepdims=True)) - sc.max(1, keepdims=True)
    for grp in range(hkv):
        shared_sc = np.log(np.exp(norm[grp * g : (grp + 1) * g]).sum(0))
        top = np.sort(np.argsort(-shared_sc, kind="stable")[:5])
        np.testing.assert_array_equal(sel_sh[grp * g][:5], top)


def test_shared_with_one_head_per_group_is_per_head():
    rng = np.random.default_rng(8)
    q, k, v = _rand_case(rng, 8 * 25, 3, 1, 32)
    valid = np.ones(8 * 25, bool)
    for score in ALL_SCORES:
        omega = _omega_for(score, 32)
        args = (q, k, v, valid, None, 25, 8, 4, 0, 0, score, 0.2, omega)
        a = R.radar_attention(*args, shared=True)
        b = R.radar_attention(*args, shared=False)
        np.testing.assert_array_equal(a[0], b[0])
        for x, y in zip(a[1], b[1]):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------------------
# planted key: a single strongly-attended key far back must be found with a small top_k

D_PL, L_PL, N_PL, POS_PL = 64, 64, 8192, 1000  # POS_PL lies in segment 15 of 128


def _planted(seed, key_std, q_norm, c):
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((N_PL, 1, D_PL)) * key_std).astype(np.float32)  # k: [n_kv, 1, D]
    v = rng.standard_normal((N_PL, 1, D_PL)).astype(np.float32)
    q = rng.standard_normal((1, D_PL))
    q = (q / np.linalg.norm(q) * q_norm).astype(np.float32)  # q: [1, D]
    k[POS_PL, 0] = c * q[0]
    return q, k, v


@pytest.mark.parametrize("score", [R.SCORE_MEAN, R.SCORE_MEANVAR, R.SCORE_MINMAX, R.SCORE_ORACLE])
def test_planted_key_found(score):
    # |q| = 8, keys ~ N(0, 1): ordinary logits ~ N(0, 1); the planted key's logit is 64
    q, k, v = _planted(11, 1.0, 8.0, 8.0)
    scale = 1.0 / math.sqrt(D_PL)
    n_seg = N_PL // L_PL
    valid = np.ones(N_PL, bool)
    summ = R.summarize(k, valid, L_PL, n_seg, score, scale)
    out, sel = R.radar_attention(q, k, v, valid, summ, n_seg, L_PL, 4, 1, 64, score, scale)
    assert POS_PL // L_PL in sel[0]
    np.testing.assert_allclose(out, R.dense_attention(q, k, v, valid, scale), atol=1e-5)


def test_planted_key_found_rf():
    # the paper's positive random features (m = 16*D) with a moderate signal: their variance grows like
    # exp(|q'|^2 + |k'|^2), so we keep ordinary keys small (std 0.3) and the planted logit at 12.5
    q, k, v = _planted(12, 0.3, 10.0, 1.0)
    scale = 1.0 / math.sqrt(D_PL)
    n_seg = N_PL // L_PL
    valid = np.ones(N_PL, bool)
    omega = R.make_omega(D_PL, 16 * D_PL, 2)
    summ = R.summarize(k, valid, L_PL, n_seg, R.SCORE_RF, scale, omega)
    out, sel = R.radar_attention(q, k, v, valid, summ, n_seg, L_PL, 4, 1, 64, R.SCORE_RF, scale, omega)
    assert POS_PL // L_PL in sel[0]
    # the planted key holds ~97% of the attention mass, so the sparse output is close to the dense one
    dense = R.dense_attention(q, k, v, valid, scale)
    assert np.linalg.norm(out - dense) < 0.1 * np.linalg.norm(dense)


# ----------------------------------------------------------------------------------------------------
# summaries


def test_summary_moments_and_minmax_with_holes():
    rng = np.random.default_rng(9)
    n_kv, hkv, d, seg_len, n_seg = 70, 2, 16, 16, 4  # a 6-cell tail, not summarized
    k = (rng.standard_normal((n_kv, hkv, d)) * 3 + 1).astype(np.float32)
    valid = rng.random(n_kv) > 0.3
    valid[2 * seg_len : 3 * seg_len] = False  # empty segment
    valid[3 * seg_len : 4 * seg_len] = False
    valid[3 * seg_len + 5] = True  # single-cell segment: variance 0
    mv = R.summarize(k, valid, seg_len, n_seg, R.SCORE_MEANVAR, 0.25)
    mm = R.summarize(k, valid, seg_len, n_seg, R.SCORE_MINMAX, 0.25)
    orc = R.summarize(k, valid, seg_len, n_seg, R.SCORE_ORACLE, 0.25)
    np.testing.assert_array_equal(mv, R.summarize(k, valid, seg_len, n_seg, R.SCORE_MEAN, 0.25))
    assert mv.shape == (n_seg, hkv, 2 * d + 1) and mv.dtype == np.float32
    assert orc.shape == (n_seg, hkv, 1)
    for s in range(n_seg):
        sl = slice(s * seg_len, (s + 1) * seg_len)
        cells = k[sl][valid[sl]].astype(np.float64)  # [n, Hkv, D]
        n = len(cells)
        np.testing.assert_array_equal(mv[s, :, -1], n)
        np.testing.assert_array_equal(mm[s, :, -1], n)
        np.testing.assert_array_equal(orc[s, :, 0], n)
        if n == 0:
            np.testing.assert_array_equal(mv[s], 0.0)
            np.testing.assert_array_equal(mm[s], 0.0)
            continue
        np.testing.assert_allclose(mv[s, :, :d], cells.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mv[s, :, d : 2 * d], cells.var(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(mm[s, :, :d], cells.min(0).astype(np.float32))
        np.testing.assert_array_equal(mm[s, :, d : 2 * d], cells.max(0).astype(np.float32))


def test_summary_rf_matches_naive_and_survives_large_norms():
    rng = np.random.default_rng(10)
    n_kv, hkv, d, m, seg_len, n_seg = 48, 2, 64, 32, 16, 3
    scale = 1.0 / math.sqrt(d)
    omega = R.make_omega(d, m, 5)
    valid = rng.random(n_kv) > 0.25
    valid[2 * seg_len : 3 * seg_len] = False
    valid[2 * seg_len + 3] = True  # a one-cell segment

    # moderate keys: the naive fp64 exp-mean (the paper's feature map, no 1/sqrt(2m)) agrees
    k = rng.standard_normal((n_kv, hkv, d)).astype(np.float32)
    rf = R.summarize(k, valid, seg_len, n_seg, R.SCORE_RF, scale, omega)
    assert rf.shape == (n_seg, hkv, 2 * m + 1)
    x = k.astype(np.float64) * math.sqrt(scale)
    proj = x @ omega.astype(np.float64)  # [n_kv, Hkv, m]
    sq = 0.5 * (x * x).sum(-1, keepdims=True)
    phi = np.concatenate([np.exp(proj - sq), np.exp(-proj - sq)], -1)  # [n_kv, Hkv, 2m]
    for s in range(n_seg):
        sl = slice(s * seg_len, (s + 1) * seg_len)
        naive = np.log(phi[sl][valid[sl]].mean(0))
        np.testing.assert_allclose(rf[s, :, :-1], naive, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(rf[s, :, -1], valid[sl].sum())

    # keys of norm ~250 (seen in real models): exp(-|x|^2/2) underflows in fp32 (and fp64), the log
    # domain stays finite, and a one-cell segment's row is exactly f(x) of that key
    k_big = (k / np.linalg.norm(k, axis=-1, keepdims=True) * 250.0).astype(np.float32)
    x32 = k_big * np.float32(math.sqrt(scale))
    with np.errstate(under="ignore", divide="ignore"):
        proj32 = x32 @ omega
        naive32 = np.exp(proj32 - 0.5 * (x32 * x32).sum(-1, keepdims=True))
        assert np.all(naive32 == 0.0)  # the naive fp32 computation has nothing left
    rf_big = R.summarize(k_big, valid, seg_len, n_seg, R.SCORE_RF, scale, omega)
    assert np.all(np.isfinite(rf_big))
    assert rf_big[:, :, :-1].max() < -1000.0
    xb = k_big[2 * seg_len + 3].astype(np.float64) * math.sqrt(scale)  # [Hkv, D]
    pb = xb @ omega.astype(np.float64)
    sqb = 0.5 * (xb * xb).sum(-1, keepdims=True)
    np.testing.assert_allclose(rf_big[2, :, :-1], np.concatenate([pb - sqb, -pb - sqb], -1), rtol=1e-6)


def test_rf_score_estimates_log_attention_mass():
    """Unbiasedness in the benign regime: RF score ~ log(2m) + log mean_cells exp(scale*q.k)."""
    rng = np.random.default_rng(13)
    d, m, seg_len, n_seg = 16, 8192, 8, 4
    scale = 1.0 / math.sqrt(d)
    q = (rng.standard_normal((1, d)) * 0.4).astype(np.float32)
    k = (rng.standard_normal((seg_len * n_seg, 1, d)) * 0.4).astype(np.float32)
    valid = np.ones(seg_len * n_seg, bool)
    omega = R.make_omega(d, m, 1)
    rf = R.summarize(k, valid, seg_len, n_seg, R.SCORE_RF, scale, omega)
    sc = R.segment_scores(q, rf, R.SCORE_RF, scale, omega)[0]
    logit = scale * k[:, 0].astype(np.float64) @ q[0].astype(np.float64)  # [n_kv]
    exact = np.log(np.exp(logit).reshape(n_seg, seg_len).mean(1))  # [n_seg]
    np.testing.assert_allclose(sc - math.log(2 * m), exact, atol=0.03)


def test_segment_scores_formulas():
    rng = np.random.default_rng(14)
    d, seg_len, n_seg, scale = 8, 5, 3, 0.7
    q = rng.standard_normal((2, d)).astype(np.float32)
    k = rng.standard_normal((seg_len * n_seg, 1, d)).astype(np.float32)
    valid = np.ones(seg_len * n_seg, bool)
    qd = q.astype(np.float64)
    kd = k[:, 0].astype(np.float64).reshape(n_seg, seg_len, d)
    mu, var, mn, mx = kd.mean(1), kd.var(1), kd.min(1), kd.max(1)
    mv = R.summarize(k, valid, seg_len, n_seg, R.SCORE_MEANVAR, scale)
    mm = R.summarize(k, valid, seg_len, n_seg, R.SCORE_MINMAX, scale)
    np.testing.assert_allclose(R.segment_scores(q, mv, R.SCORE_MEAN, scale), scale * qd @ mu.T, rtol=1e-6)
    np.testing.assert_allclose(
        R.segment_scores(q, mv, R.SCORE_MEANVAR, scale),
        scale * qd @ mu.T + 0.5 * scale**2 * (qd * qd) @ var.T,
        rtol=1e-6,
    )
    want = scale * np.maximum(qd[:, None] * mn[None], qd[:, None] * mx[None]).sum(-1)
    np.testing.assert_allclose(R.segment_scores(q, mm, R.SCORE_MINMAX, scale), want, rtol=1e-6)
    # MINMAX is an upper bound of every logit of the segment, ORACLE is the exact log-sum-exp
    lg = scale * np.einsum("hd,sld->hsl", qd, kd)
    assert np.all(lg.max(-1) <= want + 1e-9)
    orc = R.summarize(k, valid, seg_len, n_seg, R.SCORE_ORACLE, scale)
    lgf = R._logits(qd, k.astype(np.float64), np.zeros(seg_len * n_seg), scale, 0.0, 0.0)
    np.testing.assert_allclose(
        R.segment_scores(q, orc, R.SCORE_ORACLE, scale, logits=lgf, seg_len=seg_len),
        np.log(np.exp(lg).sum(-1)),
        rtol=1e-12,
    )
