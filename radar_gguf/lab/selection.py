"""Selection quality of Radar (the paper's Theorem 2): which segments does a score pick, and how much
of the exact attention do they hold?

At sampled decode steps the real per-layer queries and keys are captured from the decode graph of
llama.cpp (the ``radar_attn-<il>`` node, through the ``cb_eval`` scheduler callback), then every
selection method is replayed in NumPy on the same query and keys and compared with exact attention:

- ``meanvar``, ``mean``, ``minmax``, ``rf``: Radar's scores (``reference.segment_scores``) on summaries
  recomputed from the captured keys (``reference.summarize``); the capture config's own score is also
  checked against the kernel (its summaries, its selection and its attention output).
- ``oracle``: the candidate segments with the most exact attention mass on the searched cells (the
  upper bound of every metric below at the same budget). ``oracle-op`` is what the library's ORACLE
  score picks (exact mass over all the segment's cells, the sink token included).
- ``window``: StreamingLLM-style sinks + recent window: the ``top_k`` most recent candidates.
- ``random``: ``top_k`` candidates uniformly at random (exact expectations, not a draw).

All methods keep the same always-attended cells (sinks, recent segments, tail) and choose ``top_k``
segments among the candidates ``[0, n_seg - R)``. The *searched* cells are the candidates' cells
minus the sinks. Per query head, with ``p`` the exact softmax over every valid cell:

- ``hit@k``: the exact most-attended candidate segment is among the method's ``k`` best-ranked
  candidates (the retrieval meaning of Hit@k; the paper's 34% / 63% are hit@1 / hit@3).
- ``seg@k``: share of the exact top-``k`` candidate segments that the selection contains.
- ``tok@k``: share of the exact top-``k`` tokens of the searched cells inside selected segments;
  ``tok_all@k`` the same over all valid cells (the always-attended cells count as contained).
- ``mass``: exact attention mass on the attended cells (dense = 1); ``mass_searched``: share of the
  searched cells' mass inside the selected segments.
- ``out_err``: relative L2 error of the head's attention output over the attended cells (the softmax
  renormalised over them, as the kernel computes it) against dense attention, ``|o - o_dense| / |o_dense|``.
  Mass alone ignores the values: a segment of heavy but near-constant value rows (secondary sinks) adds
  mass without changing the output. Not defined for ``random``.

``p`` is over the cells only: a model with attention-sink logits (``AttnCapture.has_sinks``) would put
part of its softmax on the sink, which no selection changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..config import RadarConfig
from . import reference as ref
from .capture import AttnCapture, Capture, capture_decode
from .methods import (
    Geometry,
    Method,
    SummaryCache,
    _order_from_scores,
    budget_top_k,
    exact_probs,
    method_order,
    searched_mass,
)
from .records import log

SEG_KS = (1, 3, 8)
TOK_KS = (1, 8, 32)
HIT_KS = (1, 3)
DEFAULT_METHODS = "meanvar,mean,minmax,rf,rf:n_feat=1024,oracle,oracle-op,window,random"
PAPER = {"hit@1": 0.34, "hit@3": 0.63}  # Radar paper, Llama 3.1 on PG-19


# -- metrics -------------------------------------------------------------------------------------------
def _top_cells(x: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries of each row of ``x``, largest first."""
    part = (
        np.argpartition(-x, k - 1, axis=1)[:, :k]
        if k < x.shape[1]
        else np.tile(np.arange(x.shape[1]), (len(x), 1))
    )
    return np.take_along_axis(
        part, np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable"), axis=1
    )


def selection_metrics(
    p: np.ndarray,
    order: Optional[np.ndarray],
    geom: Geometry,
    v: Optional[np.ndarray] = None,
    n_sel: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Metrics per query head (``[Hq]`` arrays) of a selection, see the module docstring.

    ``p: [Hq, n_kv]`` exact attention weights; ``order: [Hq, n_cand]`` candidate segments best first (the
    selection is ``order[:, :top_k]``), or None for the expectation of a uniformly random selection;
    ``v: [Hkv, n_kv, Dv]`` the value rows (finite; zero where masked), for ``out_err``; ``n_sel: [Hq]`` the
    number of candidates each head keeps, for adaptive methods (default: ``top_k`` for every head).
    """
    hq, n_kv = p.shape
    L, nc, ks = geom.seg_len, geom.n_cand, geom.k_sel
    out: dict[str, np.ndarray] = {}
    always = geom.always(n_kv)  # [n_kv]
    m_always = p[:, always].sum(axis=1)  # [Hq]
    segm = searched_mass(p, geom)  # [Hq, nc]
    total = segm.sum(axis=1)  # [Hq]
    best = np.argsort(-segm, axis=1, kind="stable")  # [Hq, nc] exact ranking
    searched = np.zeros(n_kv, dtype=bool)
    searched[: nc * L] = True
    searched[: min(geom.n_sink, nc * L)] = False
    if nc == 0:
        nan = np.full(hq, np.nan)
        return {
            **{f"hit@{k}": nan for k in HIT_KS},
            **{f"seg@{k}": nan for k in SEG_KS},
            **{f"tok@{k}": nan for k in TOK_KS},
            **{f"tok_all@{k}": nan for k in TOK_KS},
            "mass": m_always,
            "mass_searched": nan,
            **({} if v is None else {"out_err": output_error(p, always[None, :].astype(np.float64), v)}),
        }
    if order is None:  # uniform random: every candidate is kept with probability pi
        pi = ks / nc
        sel = np.full((hq, nc), pi)  # [Hq, nc] inclusion probability
        for k in HIT_KS:
            out[f"hit@{k}"] = np.full(hq, min(k, nc) / nc)
    else:
        sel = np.zeros((hq, nc))
        if n_sel is None:
            np.put_along_axis(sel, order[:, :ks], 1.0, axis=1)
        else:  # head h keeps its n_sel[h] best-ranked candidates
            np.put_along_axis(
                sel, order, (np.arange(nc)[None, :] < n_sel[:, None]).astype(np.float64), axis=1
            )
        rank_of_best = np.argmax(order == best[:, :1], axis=1)  # [Hq] where the exact best sits in order
        for k in HIT_KS:
            out[f"hit@{k}"] = (rank_of_best < k).astype(np.float64)
    for k in SEG_KS:
        kk = min(k, nc)
        out[f"seg@{k}"] = np.take_along_axis(sel, best[:, :kk], axis=1).mean(axis=1)
    cell_sel = np.zeros((hq, n_kv))  # [Hq, n_kv] probability that a cell is attended
    cell_sel[:, always] = 1.0
    cell_sel[:, : nc * L] = np.maximum(cell_sel[:, : nc * L], np.repeat(sel, L, axis=1))
    kmax = max(TOK_KS)
    top = _top_cells(np.where(searched[None, :], p, -1.0), min(kmax, int(searched.sum())))  # [Hq, <=kmax]
    top_all = _top_cells(p, min(kmax, n_kv))
    for k in TOK_KS:
        out[f"tok@{k}"] = np.take_along_axis(cell_sel, top[:, :k], axis=1).mean(axis=1)
        out[f"tok_all@{k}"] = np.take_along_axis(cell_sel, top_all[:, :k], axis=1).mean(axis=1)
    got = (sel * segm).sum(axis=1)  # [Hq]
    out["mass"] = m_always + got
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mass_searched"] = np.where(total > 0, got / total, np.nan)
    if v is not None:
        out["out_err"] = np.full(hq, np.nan) if order is None else output_error(p, cell_sel, v)
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean over the defined values; NaN (without numpy's warning) when there is none, e.g. random's out_err."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def output_error(p: np.ndarray, attended: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[Hq]`` relative L2 error of the attention output over the ``attended`` cells (``[Hq or 1, n_kv]``
    0/1) against the output over all cells; ``p: [Hq, n_kv]`` exact weights, ``v: [Hkv, n_kv, Dv]``
    (one contiguous block per KV head: the products below then copy nothing)."""
    hq = p.shape[0]
    g = hq // v.shape[0]
    w = p * attended  # [Hq, n_kv]
    err = np.empty(hq)
    for hk in range(v.shape[0]):
        rows = slice(hk * g, (hk + 1) * g)
        o_dense = p[rows] @ v[hk]  # [g, Dv]
        with np.errstate(invalid="ignore", divide="ignore"):
            o = (w[rows] @ v[hk]) / w[rows].sum(axis=1, keepdims=True)
            err[rows] = np.linalg.norm(o - o_dense, axis=1) / np.linalg.norm(o_dense, axis=1)
    return err


def union_cells(
    order: Optional[np.ndarray], geom: Geometry, n_kv: int, g: int, n_sel: Optional[np.ndarray] = None
) -> float:
    """Mean over KV heads of the distinct cells its ``g`` query heads attend (what one gather per KV
    head would read); for the random selection the expectation over ``g`` independent draws."""
    n_always = int(geom.always(n_kv).sum())
    if order is None:
        nc = geom.n_cand
        distinct = nc * (1.0 - (1.0 - geom.k_sel / nc) ** g) if nc else 0.0
        return float(n_always + distinct * geom.seg_len)
    hq = order.shape[0]
    if n_sel is not None:
        kept = [order[h, : n_sel[h]] for h in range(hq)]
        groups = [np.concatenate(kept[i : i + g]) for i in range(0, hq, g)]
        return float(n_always + np.mean([len(np.unique(r)) for r in groups]) * geom.seg_len)
    sel = order[:, : geom.k_sel].reshape(hq // g, g * geom.k_sel)
    return float(n_always + np.mean([len(np.unique(r)) for r in sel]) * geom.seg_len)


# -- one decode step ----------------------------------------------------------------------------------------
def kernel_check(
    cap: AttnCapture, k64: np.ndarray, valid: np.ndarray, cache: SummaryCache
) -> dict[str, float]:
    """Does NumPy reproduce the kernel on this node? Summaries (rel. error vs recomputed from the keys),
    selections (share of heads whose top-k from the kernel's summaries equals that from recomputed ones)
    and the attention output (max abs error of ``reference.radar_attention`` on the kernel's summaries)."""
    L, n_seg = cap.seg_len, cap.n_seg
    res: dict[str, float] = {}
    if cap.score == ref.SCORE_ORACLE or n_seg == 0:
        s_np = None
    else:
        s_np = cache.get(cap.layer, k64, valid, L, n_seg, cap.score, cap.scale, cap.omega)
        scale = max(1e-30, float(np.abs(s_np[..., :-1]).max()))
        res["summary_err"] = float(np.abs(cap.summaries[..., :-1] - s_np[..., :-1]).max() / scale)
        geom = Geometry.make(L, n_seg, cap.n_sink, cap.n_recent, cap.top_k)
        if geom.n_cand > geom.top_k:
            g = cap.q.shape[0] // cap.k.shape[1]
            a = _order_from_scores(
                ref.segment_scores(cap.q, cap.summaries[: geom.n_cand], cap.score, cap.scale, cap.omega),
                cap.shared,
                g,
            )[:, : geom.k_sel]
            b = _order_from_scores(
                ref.segment_scores(cap.q, s_np[: geom.n_cand], cap.score, cap.scale, cap.omega), cap.shared, g
            )[:, : geom.k_sel]
            res["same_selection"] = float(np.mean([set(x) == set(y) for x, y in zip(a, b)]))
    out, _ = ref.radar_attention(
        cap.q,
        k64,
        cap.v,
        cap.mask,
        cap.summaries,
        n_seg,
        L,
        cap.top_k,
        cap.n_sink,
        cap.n_recent,
        cap.score,
        cap.scale,
        cap.omega,
        cap.shared,
        cap.softcap,
        cap.max_bias,
        n_rescore=cap.n_rescore,
        mass_target=cap.mass_target,
    )
    res["out_err"] = float(np.abs(out - cap.out).max() / max(1e-30, float(np.abs(cap.out).max())))
    return res


def analyse_step(
    caps: dict[int, AttnCapture],
    methods: Sequence[Method],
    cache: SummaryCache,
    *,
    t_activate: int,
    capture_cfg: RadarConfig,
    check: bool = True,
    layer_ratio: float = 1.0,
) -> dict:
    """Metrics of every method on every captured layer of one decode step.

    Returns ``{"layers": {il: {spec: {metric: mean over heads}}}, "check": {il: {...}}, "geometry": {...}}``.
    A method whose ``aspect``/``seg_len_min`` differ from the captured config gets its own segment length
    ``seg_len_for(t_activate, ...)`` (the rule the library applies when Radar switches on at ``t_activate``).
    ``layer_ratio`` (the model's layers / its Radar layers) scales each method's budget as the library does.
    """
    res: dict = {"layers": {}, "check": {}, "geometry": {}}
    for il in sorted(caps):
        cap = caps[il]
        k64 = cap.k.astype(np.float64)
        valid = np.isfinite(cap.mask)
        n_kv = k64.shape[0]
        t_valid = int(valid.sum())
        p = exact_probs(cap.q, k64, cap.mask, cap.scale, cap.softcap, cap.max_bias)
        # [Hkv, n_kv, Dv], transposed once per layer rather than sliced per method; unused cells may hold NaN
        v64 = np.ascontiguousarray(
            np.where(valid[:, None, None], cap.v.astype(np.float64), 0.0).transpose(1, 0, 2)
        )
        g = cap.q.shape[0] // cap.k.shape[1]
        if check:
            res["check"][il] = kernel_check(cap, k64, valid, cache)
        per: dict[str, dict[str, float]] = {}
        for m in methods:
            if (m.cfg.aspect, m.cfg.seg_len_min) == (capture_cfg.aspect, capture_cfg.seg_len_min):
                L, n_seg = cap.seg_len, cap.n_seg
            else:
                L = ref.seg_len_for(t_activate, m.cfg.aspect, m.cfg.seg_len_min)
                n_seg = t_valid // L
            geom = Geometry.make(L, n_seg, m.cfg.n_sink, m.cfg.n_recent, m.top_k(L, layer_ratio))
            info: dict = {}
            order, n_sel = method_order(m, cap, p, geom, k64, valid, cache, info)
            met = {k: _nanmean(x) for k, x in selection_metrics(p, order, geom, v64, n_sel).items()}
            kept = geom.k_sel if n_sel is None else float(n_sel.mean())
            met["attended"] = float(geom.always(n_kv)[valid].sum() + kept * L)
            met["attended_union"] = union_cells(order, geom, t_valid, 1 if m.cfg.shared_gqa else g, n_sel)
            # keys read to score exactly beyond the attended cells (two stages), per head
            cand = m.option("cand") if m.kind == "twostage" else m.cfg.rescore if m.cfg.rescore > 1 else 0.0
            met["keys_scored"] = float(max(0.0, (geom.n_rescored(cand) - kept) * L)) if cand else 0.0
            if "n_rescored" in info:  # adaptive: each head's own candidate count
                met["keys_scored"] = float(np.mean(info["n_rescored"] - n_sel) * L)
            per[m.spec] = met
            res["geometry"][m.spec] = {
                "seg_len": L,
                "n_seg": n_seg,
                "top_k": geom.top_k,
                "n_cand": geom.n_cand,
                "n_kv": t_valid,
            }
        res["layers"][il] = per
    return res


# -- driving a model ----------------------------------------------------------------------------------------
def summarize_steps(steps: Sequence[dict]) -> dict:
    """Average per-step results: ``{"per_layer": {spec: {metric: [value per layer]}}, "mean": {spec: {metric:
    mean over layers}}, "check": {...}}`` (each layer's value is its mean over steps and heads)."""
    layers = sorted({il for s in steps for il in s["layers"]})
    specs = list(steps[0]["layers"][layers[0]].keys())
    metrics = list(steps[0]["layers"][layers[0]][specs[0]].keys())
    per_layer: dict = {}
    mean: dict = {}
    for spec in specs:
        per_layer[spec] = {}
        mean[spec] = {}
        for met in metrics:
            vals = [
                _nanmean(np.array([s["layers"][il][spec][met] for s in steps if il in s["layers"]]))
                for il in layers
            ]
            per_layer[spec][met] = vals
            mean[spec][met] = _nanmean(np.array(vals))
    check: dict = {}
    for s in steps:
        for c in s["check"].values():
            for key, v in c.items():
                check.setdefault(key, []).append(v)
    chk = {
        key: {"max" if key.endswith("err") else "mean": float(max(v) if key.endswith("err") else np.mean(v))}
        for key, v in check.items()
    }
    return {"layers": layers, "per_layer": per_layer, "mean": mean, "check": chk}


@dataclass
class SelectionRun:
    n_ctx: int
    steps: list = field(default_factory=list)
    geometry: dict = field(default_factory=dict)
    wall_s: float = 0.0
    kernel_top_k: int = 0  # the top-k the library's radar_attn used at the last captured step


def run_selection(
    model: Any,
    capture: Capture,
    tokens: Sequence[int],
    n_ctx: int,
    n_steps: int,
    stride: int,
    capture_cfg: RadarConfig,
    methods: Sequence[Method],
    *,
    cache_dir: Any = None,
    check_steps: int = 4,
    n_layer: int = 0,
    progress: Callable[[str], None] = log,
) -> SelectionRun:
    """Capture ``n_steps`` decode steps after an ``n_ctx`` context and evaluate ``methods`` on each; the
    first ``check_steps`` captures are also checked against the kernel (:func:`kernel_check`). ``n_layer``
    (the model's layer count; 0: as many as the captured Radar layers) sets the budget scale of models
    that attend globally in few layers (``budget_max_scale``)."""
    cache = SummaryCache()
    run = SelectionRun(n_ctx)
    t0 = time.perf_counter()

    def on_step(step: int, caps: dict[int, AttnCapture]) -> None:
        t1 = time.perf_counter()
        check = len(run.steps) < check_steps
        # every Radar layer is captured: the library's scale is n_layer / that count
        layer_ratio = n_layer / len(caps) if n_layer and caps else 1.0
        r = analyse_step(
            caps,
            methods,
            cache,
            t_activate=n_ctx,
            capture_cfg=capture_cfg,
            check=check,
            layer_ratio=layer_ratio,
        )
        run.steps.append(r)
        run.geometry = r["geometry"]
        run.kernel_top_k = next(iter(caps.values())).top_k
        first = methods[0].spec
        h1 = np.mean([r["layers"][il][first]["hit@1"] for il in r["layers"]])
        ms = np.mean([r["layers"][il][first]["mass_searched"] for il in r["layers"]])
        progress(
            f"  step {step:3d}: {len(caps)} layers, n_kv {next(iter(caps.values())).mask.shape[0]}, "
            f"{first} hit@1 {h1:.2f} mass_searched {ms:.2f} ({time.perf_counter() - t1:.1f} s)"
        )

    capture_decode(model, capture, tokens, n_ctx, n_steps, stride, capture_cfg, on_step, cache_dir, progress)
    run.wall_s = time.perf_counter() - t0
    return run


def kv_bytes_per_step(
    cfg: Optional[RadarConfig],
    *,
    n_kv: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    head_dim_v: Optional[int] = None,
    kv_bytes: float = 2.0,
    union_cells_per_kv_head: Optional[float] = None,
) -> dict[str, float]:
    """Attention bytes one decode step reads (all layers): K+V of the attended cells plus the summaries.

    Dense (``cfg`` None or disabled) reads every cell once per KV head. Radar reads, per KV head, the cells
    its query heads attend: ``union_cells_per_kv_head`` when measured, else the bound from the config
    (shared selection: one set; per-head: the ``G`` heads' segments disjoint), plus the summary rows of
    every summarized segment (``W`` values of ``summary_type``: 2D+1, or 2m+1 for rf), plus with
    ``rescore`` the keys (K only) of the candidates stage two scores exactly: ``ceil(rescore * top_k)``
    segments per head (per-head: the ``G`` heads' candidates disjoint), counted apart from the attended
    cells (an upper bound: a kept segment's keys are read twice). With a mass target a head attends from
    ``top_k`` up to all of its candidates: the bound counts all of them.
    """
    dv = head_dim_v or head_dim
    row = (head_dim + dv) * kv_bytes  # K+V bytes of one cell, one KV head
    if cfg is None or not cfg.enabled:
        return {
            "kv": n_layer * n_head_kv * n_kv * row,
            "summaries": 0.0,
            "rescore": 0.0,
            "cells_per_kv_head": float(n_kv),
        }
    L = ref.seg_len_for(n_kv, cfg.aspect, cfg.seg_len_min)
    n_seg = n_kv // L
    top_k = budget_top_k(cfg, L)
    r = min(n_seg, -(-cfg.n_recent // L))
    n_cand = n_seg - r
    g = 1 if cfg.shared_gqa else n_head // n_head_kv
    always = min(cfg.n_sink, n_seg * L) + (n_kv - n_cand * L)
    n_resc = min(n_cand, math.ceil(cfg.rescore * top_k)) if cfg.rescore > 1 else 0
    k_att = n_resc if cfg.mass_target > 0 and n_resc > top_k else top_k  # segments a head attends at most
    cells = union_cells_per_kv_head
    if cells is None:
        cells = always + min(n_cand, g * min(k_att, n_cand)) * L
    w = ref.summary_width(cfg.score_id, head_dim, cfg.n_feat)
    summ = (
        n_layer * n_head_kv * n_seg * w * (2.0 if cfg.summary_type == "f16" else 4.0)
        if cfg.score != "oracle"
        else n_layer * n_head_kv * n_kv * head_dim * kv_bytes
    )
    resc = 0.0
    if n_cand > top_k and n_resc > top_k:
        resc = n_layer * n_head_kv * min(n_cand, g * n_resc) * L * head_dim * kv_bytes
    return {
        "kv": n_layer * n_head_kv * cells * row,
        "summaries": summ,
        "rescore": resc,
        "cells_per_kv_head": float(cells),
    }


def fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
