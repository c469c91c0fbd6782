"""NumPy reference of the two Radar ggml ops (``radar_summarize``, ``radar_attn``).

This module implements, for one KV-cache stream and one decode token, exactly the contract written in
``docs/radar-ops.md``. It is the ground truth that the CPU and CUDA kernels are compared against, so it
favours clarity over speed: everything is computed in float64 and returned as float32.

Why by hand: no library has Radar's ops, and a reference must not share code with the kernels it checks;
so the formulas of the contract are written here directly, one function per step.

Layouts used here (NumPy, row-major, "natural" order rather than ggml's reversed ne[]):

- ``q``:         ``[Hq, D]``          one query token
- ``k``:         ``[n_kv, Hkv, D]``   the cache, cell-major
- ``v``:         ``[n_kv, Hkv, Dv]``
- ``mask``:      ``[n_kv]``           float, 0 / -inf (other finite values are ALiBi distances)
- ``summaries``: ``[n_seg, Hkv, W]``  one row of ``W = summary_width(...)`` floats per segment and head

Query head ``h`` reads KV head ``h // G`` with ``G = Hq // Hkv``. Segment ``s`` is the cells
``[s*L, (s+1)*L)``; cells from ``n_seg*L`` to ``n_kv`` are the always-attended tail.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "SCORE_RF",
    "SCORE_MEAN",
    "SCORE_MEANVAR",
    "SCORE_MINMAX",
    "SCORE_ORACLE",
    "SCORE_UNION",
    "SCORE_NAMES",
    "summary_width",
    "make_omega",
    "alibi_slopes",
    "summarize",
    "segment_scores",
    "union_ranking",
    "union_order",
    "radar_attention",
    "dense_attention",
    "seg_len_for",
]

# Score modes (the op parameter ``score``).
SCORE_RF = 0  # random features of the paper, log domain
SCORE_MEAN = 1  # mean key: scale*q.mu
SCORE_MEANVAR = 2  # mean + per-channel variance: log-mean-exp of a Gaussian
SCORE_MINMAX = 3  # per-channel min/max (Quest upper bound)
SCORE_ORACLE = 4  # exact log attention mass of the segment (reads the keys)
SCORE_UNION = 5  # candidates: half the best by MEANVAR, the others the best by MINMAX

SCORE_NAMES = {
    SCORE_RF: "rf",
    SCORE_MEAN: "mean",
    SCORE_MEANVAR: "meanvar",
    SCORE_MINMAX: "minmax",
    SCORE_ORACLE: "oracle",
    SCORE_UNION: "union",
}

MaskLike = Union[np.ndarray, npt.ArrayLike]


# ----------------------------------------------------------------------------------------------------
# small helpers


def summary_width(score: int, d: int, n_feat: int = 0) -> int:
    """Floats per (segment, KV head) summary row: 2D+1 (MEAN/MEANVAR/MINMAX), 4D+1 (UNION), 2m+1 (RF), 1
    (ORACLE).

    ``d`` is the key head dim D, ``n_feat`` the number m of random projections (RF only).
    """
    if score in (SCORE_MEAN, SCORE_MEANVAR, SCORE_MINMAX):
        return 2 * d + 1
    if score == SCORE_UNION:
        return 4 * d + 1
    if score == SCORE_RF:
        if n_feat <= 0:
            raise ValueError("RF score needs n_feat > 0")
        return 2 * n_feat + 1
    if score == SCORE_ORACLE:
        return 1
    raise ValueError(f"unknown score mode {score}")


def make_omega(d: int, m: int, seed: int = 0) -> np.ndarray:
    """Random projection ``omega: [d, m]`` float32 with i.i.d. N(0, 1) entries from a fixed seed.

    The C side loads omega from a tensor, so only determinism matters here: pass the same array to both.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, m)).astype(np.float32)


def seg_len_for(t: int, aspect: float, seg_len_min: int) -> int:
    """Segment length ``L = max(seg_len_min, floor(sqrt(t) / aspect))`` for ``t`` used cells."""
    return max(int(seg_len_min), int(math.floor(math.sqrt(max(t, 0)) / aspect)))


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ALiBi slope per query head, exactly as ggml's soft_max / flash_attn_ext (1 when max_bias == 0).

    Returns ``[n_head]`` float64.
    """
    if max_bias <= 0.0:
        return np.ones(n_head, dtype=np.float64)
    n_head_log2 = 2 ** int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_head_log2)
    m1 = 2.0 ** (-max_bias / 2.0 / n_head_log2)
    h = np.arange(n_head)
    return np.where(
        h < n_head_log2,
        m0 ** (h + 1.0),
        m1 ** (2.0 * (h - n_head_log2) + 1.0),
    ).astype(np.float64)


def _as_mask(valid_or_mask: MaskLike) -> np.ndarray:
    """Bool validity ``[n_kv]`` -> float mask (0 / -inf); a float mask is returned as float64."""
    a = np.asarray(valid_or_mask)
    if a.dtype == np.bool_:
        return np.where(a, 0.0, -np.inf)
    return a.astype(np.float64)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """Stable logsumexp along ``axis``; an all ``-inf`` slice gives ``-inf`` (no warnings, no NaN)."""
    m = np.max(x, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m_safe), axis=axis, keepdims=True)) + m_safe
    out = np.where(np.isneginf(m), -np.inf, out)
    return np.squeeze(out, axis=axis)


def _rf_features(x: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Log positive random features ``f(x) = [omega^T x, -omega^T x] - |x|^2/2``.

    ``x: [..., D]`` (already multiplied by sqrt(scale)), ``omega: [D, m]`` -> ``[..., 2m]``.
    """
    proj = x @ omega  # [..., m]
    half_sq = 0.5 * np.sum(x * x, axis=-1, keepdims=True)  # [..., 1]
    return np.concatenate([proj - half_sq, -proj - half_sq], axis=-1)


def _logits(
    q: np.ndarray,
    k: np.ndarray,
    mask: np.ndarray,
    scale: float,
    softcap: float,
    max_bias: float,
) -> np.ndarray:
    """Exact attention logits ``[Hq, n_kv]`` incl. softcap and ALiBi; invalid cells are ``-inf``.

    ``q: [Hq, D]`` f64, ``k: [n_kv, Hkv, D]`` f64, ``mask: [n_kv]`` f64.
    """
    hq = q.shape[0]
    hkv = k.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"Hq={hq} is not a multiple of Hkv={hkv}")
    g = hq // hkv
    k_h = np.repeat(k, g, axis=1)  # [n_kv, Hq, D]  KV head of each query head
    s = scale * np.einsum("hd,nhd->hn", q, k_h)  # [Hq, n_kv]
    if softcap != 0.0:
        s = softcap * np.tanh(s / softcap)
    valid = np.isfinite(mask)  # [n_kv]
    slope = alibi_slopes(hq, max_bias)  # [Hq]
    bias = slope[:, None] * np.where(valid, mask, 0.0)[None, :]  # [Hq, n_kv]
    return np.where(valid[None, :], s + bias, -np.inf)


def _softmax_attend(
    logits: np.ndarray,
    v_h: np.ndarray,
    sinks: Optional[np.ndarray],
) -> np.ndarray:
    """Softmax over the finite entries of ``logits: [Hq, n]`` times ``v_h: [n, Hq, Dv]`` -> ``[Hq, Dv]``.

    A sink adds ``exp(sinks[h] - max)`` to the denominator only; a head without any finite logit gives 0.
    """
    hq = logits.shape[0]
    dv = v_h.shape[2]
    out = np.zeros((hq, dv), dtype=np.float64)
    for h in range(hq):
        sel = np.isfinite(logits[h])
        if not np.any(sel):
            continue
        lg = logits[h, sel]  # [n_att]
        mx = lg.max()
        w = np.exp(lg - mx)  # [n_att]
        den = w.sum()
        if sinks is not None:
            den += math.exp(float(sinks[h]) - mx)
        out[h] = (w @ v_h[sel, h, :]) / den
    return out


# ----------------------------------------------------------------------------------------------------
# radar_summarize


def summarize(
    k: np.ndarray,
    valid: MaskLike,
    seg_len: int,
    n_seg: int,
    score: int,
    scale: float,
    omega: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Summaries of segments ``0 .. n_seg-1``: ``[n_seg, Hkv, W]`` float32.

    ``k: [n_kv, Hkv, D]``; ``valid: [n_kv]`` bool (a float 0/-inf mask is accepted too: valid = finite).
    Row layout (over the ``n`` valid cells of the segment; ``n = 0`` gives an all-zero row):

    - MEAN / MEANVAR: ``mu[0:D]``, population ``var[D:2D]``, ``n``
    - MINMAX:         ``min[0:D]``, ``max[D:2D]``, ``n``
    - UNION:          ``mu[0:D]``, ``var[D:2D]``, ``min[2D:3D]``, ``max[3D:4D]``, ``n``
    - RF:             ``log mean_cells exp(f_j(k*sqrt(scale)))`` for the 2m features, ``n``
    - ORACLE:         ``n``
    """
    k = np.asarray(k, dtype=np.float64)  # k: [n_kv, Hkv, D]
    n_kv, hkv, d = k.shape
    valid_b = np.asarray(valid)
    if valid_b.dtype != np.bool_:
        valid_b = np.isfinite(valid_b.astype(np.float64))
    if n_seg * seg_len > n_kv:
        raise ValueError(f"n_seg*L = {n_seg * seg_len} exceeds n_kv = {n_kv}")
    if score == SCORE_RF:
        if omega is None:
            raise ValueError("RF score needs omega")
        omega = np.asarray(omega, dtype=np.float64)  # omega: [D, m]
        if omega.shape[0] != d:
            raise ValueError(f"omega has {omega.shape[0]} rows, keys have D = {d}")
    w = summary_width(score, d, 0 if omega is None else omega.shape[1])

    ks = k[: n_seg * seg_len].reshape(n_seg, seg_len, hkv, d)  # ks: [n_seg, L, Hkv, D]
    vs = valid_b[: n_seg * seg_len].reshape(n_seg, seg_len)  # vs: [n_seg, L]
    n = vs.sum(axis=1).astype(np.float64)  # n: [n_seg]
    has = n > 0  # [n_seg]
    n_safe = np.maximum(n, 1.0)
    vmask = vs[:, :, None, None]  # [n_seg, L, 1, 1]

    out = np.zeros((n_seg, hkv, w), dtype=np.float64)  # out: [n_seg, Hkv, W]
    out[:, :, -1] = n[:, None]

    if score in (SCORE_MEAN, SCORE_MEANVAR, SCORE_UNION):
        mu = np.where(vmask, ks, 0.0).sum(axis=1) / n_safe[:, None, None]  # [n_seg, Hkv, D]
        dev = np.where(vmask, ks - mu[:, None], 0.0)  # [n_seg, L, Hkv, D]
        var = (dev * dev).sum(axis=1) / n_safe[:, None, None]  # [n_seg, Hkv, D]
        out[:, :, :d] = mu
        out[:, :, d : 2 * d] = var
    if score in (SCORE_MINMAX, SCORE_UNION):
        o = 2 * d if score == SCORE_UNION else 0
        mn = np.where(vmask, ks, np.inf).min(axis=1)  # [n_seg, Hkv, D]
        mx = np.where(vmask, ks, -np.inf).max(axis=1)  # [n_seg, Hkv, D]
        out[:, :, o : o + d] = np.where(has[:, None, None], mn, 0.0)
        out[:, :, o + d : o + 2 * d] = np.where(has[:, None, None], mx, 0.0)
    if score == SCORE_RF:
        sq = math.sqrt(scale)
        log_n = np.log(n_safe)  # [n_seg]
        # chunk over segments to bound memory: features are [chunk, L, Hkv, 2m] f64
        per_seg = max(1, seg_len * hkv * 2 * omega.shape[1])
        chunk = max(1, (1 << 24) // per_seg)
        for s0 in range(0, n_seg, chunk):
            s1 = min(n_seg, s0 + chunk)
            f = _rf_features(ks[s0:s1] * sq, omega)  # [c, L, Hkv, 2m]
            f = np.where(vs[s0:s1, :, None, None], f, -np.inf)
            lme = _logsumexp(f, axis=1) - log_n[s0:s1, None, None]  # [c, Hkv, 2m]
            out[s0:s1, :, :-1] = np.where(has[s0:s1, None, None], lme, 0.0)
    return out.astype(np.float32)  # ORACLE: only n (summary_width above refuses an unknown score)


# ----------------------------------------------------------------------------------------------------
# radar_attn


def segment_scores(
    q: np.ndarray,
    summaries: np.ndarray,
    score: int,
    scale: float,
    omega: Optional[np.ndarray] = None,
    logits: Optional[np.ndarray] = None,
    seg_len: int = 0,
) -> np.ndarray:
    """Per-head score of every segment (step 2 of the contract, without GQA sharing): ``[Hq, n_seg]``.

    ``q: [Hq, D]``, ``summaries: [n_seg, Hkv, W]``. ORACLE needs ``logits: [Hq, n_kv]`` (the exact logits
    of step 4 with invalid cells at -inf) and ``seg_len``. Segments with ``n = 0`` score ``-inf``.
    """
    q = np.asarray(q, dtype=np.float64)  # q: [Hq, D]
    sm = np.asarray(summaries, dtype=np.float64)  # sm: [n_seg, Hkv, W]
    hq, d = q.shape
    n_seg, hkv, _ = sm.shape
    g = hq // hkv
    sm_h = np.repeat(sm, g, axis=1)  # [n_seg, Hq, W]  summary row seen by each query head
    n = sm_h[:, :, -1].T  # [Hq, n_seg]

    if score == SCORE_MEAN or score == SCORE_MEANVAR:
        mu = sm_h[:, :, :d]  # [n_seg, Hq, D]
        sc = scale * np.einsum("hd,shd->hs", q, mu)  # [Hq, n_seg]
        if score == SCORE_MEANVAR:
            var = sm_h[:, :, d : 2 * d]  # [n_seg, Hq, D]
            sc = sc + 0.5 * scale * scale * np.einsum("hd,shd->hs", q * q, var)
    elif score == SCORE_MINMAX:
        mn = sm_h[:, :, :d]  # [n_seg, Hq, D]
        mx = sm_h[:, :, d : 2 * d]  # [n_seg, Hq, D]
        sc = scale * np.maximum(q[None] * mn, q[None] * mx).sum(axis=2).T  # [Hq, n_seg]
    elif score == SCORE_RF:
        if omega is None:
            raise ValueError("RF score needs omega")
        fq = _rf_features(q * math.sqrt(scale), np.asarray(omega, dtype=np.float64))  # [Hq, 2m]
        feat = sm_h[:, :, :-1]  # [n_seg, Hq, 2m]
        sc = _logsumexp(fq[None] + feat, axis=2).T  # [Hq, n_seg]
    elif score == SCORE_ORACLE:
        if logits is None or seg_len <= 0:
            raise ValueError("ORACLE score needs logits and seg_len")
        lg = logits[:, : n_seg * seg_len].reshape(hq, n_seg, seg_len)  # [Hq, n_seg, L]
        sc = _logsumexp(lg, axis=2)  # [Hq, n_seg]
    else:
        raise ValueError(f"unknown score mode {score}")
    return np.where(n > 0, sc, -np.inf)


def union_parts(summaries: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """UNION summaries ``[n_seg, Hkv, 4D+1]`` as a MEANVAR and a MINMAX summary ``[n_seg, Hkv, 2D+1]`` each."""
    sm = np.asarray(summaries)
    n = sm[:, :, -1:]
    return np.concatenate([sm[:, :, : 2 * d], n], axis=2), np.concatenate(
        [sm[:, :, 2 * d : 4 * d], n], axis=2
    )


def union_ranking(q: np.ndarray, summaries: np.ndarray, scale: float, shared: bool, n_c: int) -> np.ndarray:
    """UNION's stage-one ranking ``[Hq, n_cand]`` of the candidates' summaries ``[n_cand, Hkv, 4D+1]``: the
    MEANVAR and MINMAX scores (each shared over the GQA group with ``shared``) merged by :func:`union_order`."""
    q = np.asarray(q, dtype=np.float64)
    g = q.shape[0] // np.asarray(summaries).shape[1]
    parts = union_parts(summaries, q.shape[1])
    sc_a, sc_b = (segment_scores(q, p, t, scale) for p, t in zip(parts, (SCORE_MEANVAR, SCORE_MINMAX)))
    if shared:
        sc_a, sc_b = _share_scores(sc_a, g), _share_scores(sc_b, g)
    return union_order(sc_a, sc_b, n_c)


def union_order(sc_a: np.ndarray, sc_b: np.ndarray, n_c: int) -> np.ndarray:
    """UNION's ranking ``[Hq, n_cand]`` of stage one: the ``ceil(n_c / 2)`` best by ``sc_a`` (MEANVAR), then
    the others by ``sc_b`` (MINMAX), so that the first ``n_c`` are the union of the two scores' picks. Ties
    go to the lower segment index, as in the kernel."""
    n_a = min((n_c + 1) // 2, sc_a.shape[1])
    out = np.empty(sc_a.shape, dtype=np.int64)
    for h in range(sc_a.shape[0]):
        first = np.argsort(-sc_a[h], kind="stable")[:n_a]
        rest = np.ones(sc_a.shape[1], dtype=bool)
        rest[first] = False
        others = np.flatnonzero(rest)
        out[h] = np.concatenate([first, others[np.argsort(-sc_b[h, others], kind="stable")]])
    return out


def _share_scores(sc: np.ndarray, g: int) -> np.ndarray:
    """GQA-shared score ``logsumexp_{h in group}(score_h(s) - logsumexp_s' score_h(s'))``.

    ``sc: [Hq, n_cand]`` -> ``[Hq, n_cand]`` (identical rows within a group of ``g`` heads). A head whose
    scores are all ``-inf`` has no attention share to give and contributes nothing.
    """
    hq, n_cand = sc.shape
    norm = _logsumexp(sc, axis=1)  # [Hq]
    ok = np.isfinite(norm)  # [Hq]
    share = np.where(ok[:, None], sc - np.where(ok, norm, 0.0)[:, None], -np.inf)  # [Hq, n_cand]
    grouped = _logsumexp(share.reshape(hq // g, g, n_cand), axis=1)  # [Hkv, n_cand]
    return np.repeat(grouped, g, axis=0)  # [Hq, n_cand]


def rescore_exact(
    cand: np.ndarray, logits: np.ndarray, seg_len: int, n_sink: int, shared: bool, g: int
) -> np.ndarray:
    """Stage two of the two-stage selection: order each head's candidates by their exact score.

    ``cand: [Hq, n_c]`` candidate segments per head (the same within a group when ``shared``),
    ``logits: [Hq, n_kv]``. A candidate's exact score is the log of its attention mass over its cells
    past the sinks (the sinks are attended anyway); shared selection ranks by the group's summed share,
    as :func:`_share_scores` does with summary scores. Returns ``[Hq, n_c]``, best first, ties to the lower
    segment.
    """
    cand = np.sort(cand, axis=1)  # [Hq, n_c] ascending: a stable sort then breaks ties by segment
    ex = rescore_scores(cand, logits, seg_len, n_sink, shared, g)  # [Hq, n_c]
    order = np.argsort(-ex, axis=1, kind="stable")  # [Hq, n_c]
    return np.take_along_axis(cand, order, axis=1)


def rescore_scores(
    cand: np.ndarray, logits: np.ndarray, seg_len: int, n_sink: int, shared: bool, g: int
) -> np.ndarray:
    """The exact scores stage two ranks by: ``[Hq, n_c]`` for the candidates ``cand: [Hq, n_c]`` (see
    :func:`rescore_exact`)."""
    L = seg_len
    cells = cand[:, :, None] * L + np.arange(L)[None, None, :]  # [Hq, n_c, L]
    lg = np.take_along_axis(logits, cells.reshape(cand.shape[0], -1), axis=1).reshape(cells.shape)
    ex = _logsumexp(np.where(cells < n_sink, -np.inf, lg), axis=2)  # [Hq, n_c]
    return _share_scores(ex, g) if shared else ex


def mass_target_select(
    cand: np.ndarray,
    logits: np.ndarray,
    always: np.ndarray,
    seg_len: int,
    n_sink: int,
    shared: bool,
    g: int,
    top_k: int,
    p: float,
    sinks: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage two with a mass target: the candidates ``cand: [Hq, n_c]`` ordered best first, how many of
    them each head keeps and their shares in that order, ``([Hq, n_c], [Hq], [Hq, n_c])``.

    Each head's exact masses are taken as shares of all the mass the two stages know of: the candidates
    (past the sinks) plus the always-attended cells ``always: [n_kv]`` bool (sinks, recent segments, tail)
    and the sink logit ``sinks: [Hq]``. Shared selection ranks by the group's summed share. Past the ``top_k``
    best, candidates are kept while the kept share plus the always-attended share is below ``p`` (``p * g``
    summed over a shared group), up to all ``n_c`` (all of them at ``p = 1``). ``logits: [Hq, n_kv]``.
    """
    hq, n_c = cand.shape
    cand = np.sort(cand, axis=1)  # ties break by segment after a stable sort
    ex = rescore_scores(cand, logits, seg_len, n_sink, False, g)  # [Hq, n_c] each head's log mass
    al = _logsumexp(np.where(always[None, :], logits, -np.inf), axis=1)  # [Hq] always-attended log mass
    if sinks is not None:
        al = np.logaddexp(al, np.asarray(sinks, dtype=np.float64))
    tot = np.logaddexp(_logsumexp(ex, axis=1), al)  # [Hq] all the mass the stages know of
    ok = np.isfinite(tot)
    share = np.where(ok[:, None], np.exp(ex - np.where(ok, tot, 0.0)[:, None]), 0.0)  # [Hq, n_c]
    base = np.where(ok, np.exp(al - np.where(ok, tot, 0.0)), 0.0)  # [Hq]
    target = p
    if shared:
        share = np.repeat(share.reshape(hq // g, g, n_c).sum(axis=1), g, axis=0)
        base = np.repeat(base.reshape(hq // g, g).sum(axis=1), g)
        target = p * g
    order = np.argsort(-share, axis=1, kind="stable")  # [Hq, n_c]
    ranked = np.take_along_axis(cand, order, axis=1)
    ranked_share = np.take_along_axis(share, order, axis=1)  # [Hq, n_c] best first
    kept = base[:, None] + np.cumsum(ranked_share, axis=1)  # [Hq, n_c] share after j + 1 kept
    pre = np.concatenate([base[:, None], kept], axis=1)  # [Hq, n_c + 1] share after c kept
    need = (pre < target).sum(axis=1) if p < 1 else np.full(hq, n_c)  # the first count reaching the target
    return ranked, np.clip(np.maximum(need, top_k), 0, n_c).astype(np.int64), ranked_share


def estimated_need(ranked_scores: np.ndarray, always_lse: np.ndarray, seg_len: int, p: float) -> np.ndarray:
    """How many of the best-ranked segments each head needs for their *estimated* share of the attention mass
    to reach ``p``, ``[Hq]`` int (at most ``n_cand + 1``: not reached). ``ranked_scores: [Hq, n_cand]`` the
    segment scores best first (a meanvar score is the log of a segment's estimated mean ``exp(scale q.k)``,
    so its estimated mass is ``seg_len exp(score)``); ``always_lse: [Hq]`` the exact log mass of the cells
    attended whatever the selection (sinks, recent window, tail, a sink logit)."""
    est = np.asarray(ranked_scores, dtype=np.float64) + math.log(seg_len)  # [Hq, n_cand] log mass
    la = np.asarray(always_lse, dtype=np.float64)
    top = np.maximum(est.max(axis=1), la)  # [Hq]
    ok = np.isfinite(top)
    top = np.where(ok, top, 0.0)
    cum = np.cumsum(np.exp(est - top[:, None]), axis=1)  # [Hq, n_cand] estimated mass of the first j+1
    base = np.exp(la - top)  # [Hq]
    total = base + cum[:, -1]
    need = ((base[:, None] + cum) < p * total[:, None]).sum(axis=1) + 1  # the first count reaching p
    return np.where(ok, need, 1).astype(np.int64)


def radar_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    valid_or_mask: MaskLike,
    summaries: Optional[np.ndarray],
    n_seg: int,
    seg_len: int,
    top_k: int,
    n_sink: int,
    n_recent: int,
    score: int,
    scale: float,
    omega: Optional[np.ndarray] = None,
    shared: bool = False,
    softcap: float = 0.0,
    max_bias: float = 0.0,
    sinks: Optional[np.ndarray] = None,
    n_rescore: int = 0,
    mass_target: float = 0.0,
    rescore_max: int = 0,
    rescore_mass: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Radar decode attention for one token of one stream (steps 1-4 of ``docs/radar-ops.md``).

    ``q: [Hq, D]``, ``k: [n_kv, Hkv, D]``, ``v: [n_kv, Hkv, Dv]``; ``valid_or_mask: [n_kv]`` a float KQ
    mask (0 / -inf / ALiBi distances; valid = finite) or a bool validity array; ``summaries:
    [n_seg, Hkv, W]`` as produced by :func:`summarize` (``None``: computed here from ``k`` and the mask);
    ``sinks: [Hq]`` optional sink logits. ``n_rescore > top_k``: two-stage selection, the ``n_rescore`` best
    candidates by score are rescored exactly (:func:`rescore_exact`) and the ``top_k`` best of those kept;
    with ``mass_target`` p > 0 more of them are kept until they hold the share p (:func:`mass_target_select`).
    ``rescore_mass`` > 0 (per-head selection): each head rescores as many of its best candidates as
    :func:`estimated_need` says for that share, between ``n_rescore`` and ``rescore_max``.

    Returns ``(out [Hq, Dv] float32, selected)`` where ``selected[h]`` is the sorted int array of the
    segment ids kept for query head ``h``: the ``top_k`` chosen candidates plus the forced recent ones.
    """
    q = np.asarray(q, dtype=np.float64)  # q: [Hq, D]
    k = np.asarray(k, dtype=np.float64)  # k: [n_kv, Hkv, D]
    v = np.asarray(v, dtype=np.float64)  # v: [n_kv, Hkv, Dv]
    mask = _as_mask(valid_or_mask)  # mask: [n_kv]
    hq = q.shape[0]
    n_kv, hkv, _ = k.shape
    g = hq // hkv
    L = seg_len
    if n_seg * L > n_kv:
        raise ValueError(f"n_seg*L = {n_seg * L} exceeds n_kv = {n_kv}")
    if summaries is None:
        summaries = summarize(k, np.isfinite(mask), L, n_seg, score, scale, omega)
    summaries = np.asarray(summaries)
    if summaries.shape[0] < n_seg:
        raise ValueError(f"summaries hold {summaries.shape[0]} segments, n_seg = {n_seg}")
    summaries = summaries[:n_seg]  # [n_seg, Hkv, W]

    logits = _logits(q, k, mask, scale, softcap, max_bias)  # [Hq, n_kv]

    # 1. recent segments are always kept; candidates are [0, n_seg - R)
    n_rec = min(n_seg, -(-max(n_recent, 0) // L))  # ceil(n_recent / L)
    n_cand = n_seg - n_rec
    recent = np.arange(n_cand, n_seg)

    # 2. choose top_k candidates per head (ties -> lower index via a stable sort on -score)
    if n_cand <= top_k:
        chosen = [np.arange(n_cand) for _ in range(hq)]
    else:
        n_c = min(n_rescore, n_cand) if n_rescore > top_k else top_k
        if score == SCORE_UNION:
            order = union_ranking(q, summaries[:n_cand], scale, shared, n_c)  # [Hq, n_cand]
        else:
            sc = segment_scores(q, summaries[:n_cand], score, scale, omega, logits, L)  # [Hq, n_cand]
            if shared:
                sc = _share_scores(sc, g)
            order = np.argsort(-sc, axis=1, kind="stable")  # [Hq, n_cand]
        keep = np.full(hq, max(top_k, 0))  # [Hq] candidates kept per head
        always = np.zeros(n_kv, dtype=bool)  # [n_kv] cells attended whatever the selection
        always[: min(max(n_sink, 0), n_seg * L)] = True
        always[n_cand * L :] = True
        adaptive = rescore_mass > 0 and rescore_max > n_rescore > top_k and not shared and n_cand > n_c
        adaptive = adaptive and score != SCORE_UNION  # its estimate needs one score
        if adaptive:
            al = _logsumexp(np.where(always[None, :], logits, -np.inf), axis=1)  # [Hq]
            if sinks is not None:
                al = np.logaddexp(al, np.asarray(sinks, dtype=np.float64))
            n_hi = min(rescore_max, n_cand)
            need = estimated_need(np.take_along_axis(sc, order, axis=1), al, L, rescore_mass)
            n_h = np.clip(need, n_c, n_hi)  # [Hq] candidates rescored per head
            order = order.copy()
            for h in range(hq):
                c, hs = int(n_h[h]), slice(h, h + 1)
                if mass_target > 0:
                    sk = None if sinks is None else np.asarray(sinks)[hs]
                    ranked, kp, _ = mass_target_select(
                        order[hs, :c], logits[hs], always, L, n_sink, False, 1, top_k, mass_target, sk
                    )
                    order[h, :c], keep[h] = ranked[0], kp[0]
                else:
                    order[h, :c] = rescore_exact(order[hs, :c], logits[hs], L, n_sink, False, 1)[0]
        elif n_c > top_k and mass_target > 0:
            order, keep, _ = mass_target_select(
                order[:, :n_c], logits, always, L, n_sink, shared, g, top_k, mass_target, sinks
            )  # [Hq, n_c], [Hq]
        elif n_c > top_k:
            order = rescore_exact(order[:, :n_c], logits, L, n_sink, shared, g)  # [Hq, n_c]
        chosen = [order[h, : keep[h]] for h in range(hq)]
    selected = [np.sort(np.concatenate([c, recent])).astype(np.int64) for c in chosen]

    # 3. attended cells: sinks U kept segments U tail, each once
    att = np.zeros((hq, n_kv), dtype=bool)  # [Hq, n_kv]
    att[:, : min(max(n_sink, 0), n_seg * L)] = True
    att[:, n_seg * L :] = True
    for h in range(hq):
        cells = (selected[h][:, None] * L + np.arange(L)[None, :]).ravel()
        att[h, cells] = True

    # 4. exact softmax over attended valid cells
    v_h = np.repeat(v, g, axis=1)  # [n_kv, Hq, Dv]
    out = _softmax_attend(np.where(att, logits, -np.inf), v_h, sinks)
    return out.astype(np.float32), selected


def dense_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: MaskLike,
    scale: float,
    softcap: float = 0.0,
    max_bias: float = 0.0,
    sinks: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Plain softmax attention over all valid cells: ``[Hq, Dv]`` float32.

    ``q: [Hq, D]``, ``k: [n_kv, Hkv, D]``, ``v: [n_kv, Hkv, Dv]``, ``mask: [n_kv]`` (float or bool).
    """
    q = np.asarray(q, dtype=np.float64)  # q: [Hq, D]
    k = np.asarray(k, dtype=np.float64)  # k: [n_kv, Hkv, D]
    v = np.asarray(v, dtype=np.float64)  # v: [n_kv, Hkv, Dv]
    m = _as_mask(mask)  # m: [n_kv]
    g = q.shape[0] // k.shape[1]
    logits = _logits(q, k, m, scale, softcap, max_bias)  # [Hq, n_kv]
    return _softmax_attend(logits, np.repeat(v, g, axis=1), sinks).astype(np.float32)
