"""Selection methods: the rules that pick the segments a decode step attends, replayed in NumPy on captured
queries and keys (``lab.capture``) so that they can be compared at the same budget (``lab.selection``).

- ``meanvar``, ``mean``, ``minmax``, ``union``, ``rf``: Radar's scores on summaries recomputed from the keys;
- ``oracle`` (exact attention mass of the searched cells) and ``oracle-op`` (the library's ORACLE score);
- ``window`` (sinks + recent window) and ``random`` (exact expectations);
- adaptive, not in the library: ``mass`` keeps each head's best-ranked segments until their *estimated*
  share of the attention mass reaches ``p`` (between ``floor`` and ``ceil`` tokens), ``twostage`` rescores
  the summaries' ``cand x top_k`` best candidates exactly from their keys and keeps the best ``top_k``,
  ``adaptive`` is the library's two stages with a mass target whose candidate count adapts per head: the
  summaries' estimated shares (as ``mass``) decide how many segments stage two rescores, from ``rescore x
  top_k`` up to ``cmax x top_k``, until the estimate reaches ``p1``;
- per-key sketches, not in the library: ``lowrank`` ranks each segment by the mass of its cells' logits computed
  from rank-``r`` projections of the keys (a PCA basis per layer and KV head, the coefficients rounded to
  f16, so ``2r`` bytes a cell and KV head where a ``meanvar`` summary holds ``(4D + 2)/L``), then, like the summary
  scores, takes the library's two stages (``rescore``, ``mass_target``). ``r`` = the head size is stage one
  by the exact mass. ``sparq`` does the same with the ``r`` channels where the query is largest (SparQ
  Attention's approximation: those channels of every key, the logits' temperature scaled by the share of
  ``|q|`` they hold), a sketch that follows the query where ``lowrank``'s basis follows the keys. Both answer
  how much of the gap between the summaries and the exact ranking a few bytes per key close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import RadarConfig
from . import reference as ref
from .capture import AttnCapture
from .records import parse_config

METHODS = (
    "meanvar", "mean", "minmax", "union", "rf", "oracle", "oracle-op", "window", "random", "mass", "twostage",
    "adaptive", "lowrank", "sparq",
)  # fmt: skip
# options of the adaptive methods (not RadarConfig fields): mass target p between a floor and a ceiling of
# tokens; two-stage: candidates = cand x the budget's segments, rescored exactly from their keys; adaptive:
# stage one's estimated share p1 and its ceiling, cmax x the budget's segments
METHOD_OPTIONS = {
    "mass": {"p": 0.9, "floor": 256, "ceil": 4096},
    "twostage": {"cand": 4.0},
    "adaptive": {"p1": 0.9, "cmax": 16.0},
    "lowrank": {"r": 8.0},
    "sparq": {"r": 8.0},
}
# the methods that rank like a summary score and so take the library's two stages (rescore, mass_target)
STAGE_ONE = ("meanvar", "mean", "minmax", "union", "rf", "adaptive", "lowrank", "sparq")


# -- exact attention and segment geometry -------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Segments of one decode step: candidates ``[0, n_cand)``, the rest always attended."""

    seg_len: int
    n_seg: int
    n_sink: int
    n_recent_seg: int  # R = min(n_seg, ceil(n_recent / L))
    top_k: int

    @classmethod
    def make(cls, seg_len: int, n_seg: int, n_sink: int, n_recent: int, top_k: int) -> Geometry:
        return cls(seg_len, n_seg, n_sink, min(n_seg, -(-max(n_recent, 0) // seg_len)), top_k)

    @property
    def n_cand(self) -> int:
        return self.n_seg - self.n_recent_seg

    @property
    def k_sel(self) -> int:
        return min(self.top_k, self.n_cand)

    def n_rescored(self, factor: float) -> int:
        """Candidates stage two rescores with ``factor`` (``rescore`` or ``cand``): ``ceil(factor * k_sel)``,
        at least ``k_sel``, at most the candidates."""
        return min(self.n_cand, max(self.k_sel, math.ceil(factor * self.k_sel)))

    def always(self, n_kv: int) -> np.ndarray:
        """``[n_kv]`` bool: sinks, recent segments and tail (attended whatever the selection)."""
        a = np.zeros(n_kv, dtype=bool)
        a[: min(self.n_sink, self.n_seg * self.seg_len)] = True
        a[self.n_cand * self.seg_len :] = True
        return a


def exact_probs(
    q: np.ndarray, k: np.ndarray, mask: np.ndarray, scale: float, softcap: float = 0.0, max_bias: float = 0.0
) -> np.ndarray:
    """Dense softmax attention weights ``[Hq, n_kv]`` f64 (0 on invalid cells).

    ``q: [Hq, D]``, ``k: [n_kv, Hkv, D]``, ``mask: [n_kv]`` float (0 / -inf / ALiBi) or bool validity.
    """
    q = np.asarray(q, dtype=np.float64)
    m = ref._as_mask(mask)  # [n_kv]
    hq = q.shape[0]
    n_kv, hkv, _ = k.shape
    g = hq // hkv
    s = np.empty((hq, n_kv))
    for h in range(hkv):  # [G, D] @ [D, n_kv]: no [n_kv, Hq, D] copy of the keys
        s[h * g : (h + 1) * g] = q[h * g : (h + 1) * g] @ np.asarray(k[:, h, :], dtype=np.float64).T
    s *= scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    valid = np.isfinite(m)
    s += ref.alibi_slopes(hq, max_bias)[:, None] * np.where(valid, m, 0.0)[None, :]
    s[:, ~valid] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def searched_mass(p: np.ndarray, geom: Geometry) -> np.ndarray:
    """Exact attention mass of each candidate segment's searched cells (sinks excluded): ``[Hq, n_cand]``."""
    L, nc = geom.seg_len, geom.n_cand
    ps = p[:, : nc * L].copy()  # [Hq, nc*L]
    ps[:, : min(geom.n_sink, nc * L)] = 0.0
    return ps.reshape(p.shape[0], nc, L).sum(axis=2)


# -- methods ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A selection rule: ``kind`` (a score name, ``oracle``, ``oracle-op``, ``window``, ``random``) and the
    RadarConfig fields that matter (budget, window, sinks, sharing, features, segment length)."""

    spec: str
    kind: str
    cfg: RadarConfig
    options: tuple = ()  # (name, value) pairs of METHOD_OPTIONS[kind]

    def option(self, name: str) -> float:
        return dict(self.options).get(name, METHOD_OPTIONS.get(self.kind, {}).get(name, 0.0))

    def top_k(self, seg_len: int, layer_ratio: float = 1.0) -> int:
        """Segments to select, as ``llama_kv_cache::radar_top_k``: ``top_k`` if set, else the token budget
        scaled by ``min(layer_ratio, budget_max_scale)`` (``layer_ratio`` = all layers / Radar layers)."""
        return budget_top_k(self.cfg, seg_len, layer_ratio)


def budget_top_k(cfg: RadarConfig, seg_len: int, layer_ratio: float = 1.0) -> int:
    """Segments the library selects per head: ``top_k`` if set, else ``token_budget`` scaled by
    ``max(1, min(layer_ratio, budget_max_scale))`` over the segment length (float32, as in C++)."""
    if cfg.top_k > 0:
        return cfg.top_k
    scale = max(1.0, float(np.float32(min(cfg.budget_max_scale, layer_ratio))))
    return max(1, int(np.float32(cfg.token_budget * scale) / np.float32(seg_len)))


def parse_method(spec: str, base: Optional[RadarConfig] = None) -> Method:
    """``NAME[:key=value,...]`` with NAME in METHODS; the fields are RadarConfig's."""
    spec = spec.strip()
    name, colon, rest = spec.partition(":")
    if name not in METHODS:
        raise ValueError(f"method {spec!r}: name must be one of {', '.join(METHODS)}")
    score = name if name in ("meanvar", "mean", "minmax", "union", "rf") else "meanvar"
    if name == "oracle-op":
        score = "oracle"
    options, fields = [], []
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, _, value = item.partition("=")
        if key.strip() in METHOD_OPTIONS.get(name, {}):
            try:
                options.append((key.strip(), float(value)))
            except ValueError:
                raise ValueError(f"method {spec!r}: {key.strip()} must be a number, got {value!r}") from None
        else:
            fields.append(item)
    cfg = parse_config(score + (":" + ",".join(fields) if fields else ""), base)
    if name == "adaptive" and cfg.shared_gqa:
        raise ValueError(f"method {spec!r}: adaptive selects per query head (shared_gqa is not replayed)")
    if name in ("lowrank", "sparq") and cfg.shared_gqa:
        raise ValueError(f"method {spec!r}: {name} selects per query head (shared_gqa is not replayed)")
    if name not in STAGE_ONE:
        # the library's two-stage selection applies to the summary scores; the other methods rank alone
        if any(f.partition("=")[0].strip() == "rescore" for f in fields):
            raise ValueError(f"method {spec!r}: rescore applies to the summary scores only (twostage: cand=)")
        cfg = cfg.replace(rescore=0.0)
    return Method(spec, name, cfg, tuple(options))


class SummaryCache:
    """Summaries recomputed from captured keys, per (layer, score, L, features), extended as segments
    complete (keys of earlier cells do not change between decode steps)."""

    def __init__(self) -> None:
        self._s: dict[tuple, np.ndarray] = {}
        self.omegas: dict[tuple, np.ndarray] = {}
        self._bases: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def basis(self, layer: int, k64: np.ndarray, valid: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Per KV head the mean ``[Hkv, D]`` and the top ``r`` principal directions ``[Hkv, D, r]`` of the
        valid keys, made once per layer from the first step's keys (a library would make them when Radar
        switches on, from the prompt's keys, as it builds the first summaries)."""
        key = (layer, r)
        if key not in self._bases:
            k = k64[valid]  # [n, Hkv, D]
            mu = k.mean(axis=0)
            basis = np.empty((k.shape[1], k.shape[2], r))
            for h in range(k.shape[1]):
                _, _, vt = np.linalg.svd(k[:, h, :] - mu[h], full_matrices=False)
                basis[h] = vt[:r].T
            self._bases[key] = (mu, basis)
        return self._bases[key]

    def omega(self, d: int, m: int, seed: int) -> np.ndarray:
        key = (d, m, seed)
        if key not in self.omegas:
            self.omegas[key] = ref.make_omega(d, m, seed)
        return self.omegas[key]

    def get(
        self,
        layer: int,
        k: np.ndarray,
        valid: np.ndarray,
        L: int,
        n_seg: int,
        score: int,
        scale: float,
        omega: Optional[np.ndarray],
    ) -> np.ndarray:
        key = (layer, score, L, None if omega is None else (omega.shape, float(omega[0, 0])))
        have = self._s.get(key)
        done = 0 if have is None else have.shape[0]
        if done < n_seg:
            new = ref.summarize(
                k[done * L : n_seg * L], valid[done * L : n_seg * L], L, n_seg - done, score, scale, omega
            )
            have = new if have is None else np.concatenate([have, new])
            self._s[key] = have
        return have[:n_seg]


def _order_from_scores(sc: np.ndarray, shared: bool, g: int) -> np.ndarray:
    if shared:
        sc = ref._share_scores(sc, g)
    return np.argsort(-sc, axis=1, kind="stable")


def method_order(
    m: Method,
    cap: AttnCapture,
    p: np.ndarray,
    geom: Geometry,
    k64: np.ndarray,
    valid: np.ndarray,
    cache: SummaryCache,
    info: Optional[dict] = None,
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The method's ranking of the candidates ``[Hq, n_cand]`` (None: random) and, for the adaptive
    methods, how many of them each head keeps ``[Hq]`` (None: ``top_k``). ``adaptive`` puts the segments
    each head rescored, ``[Hq]``, in ``info["n_rescored"]``."""
    hq = cap.q.shape[0]
    g = hq // cap.k.shape[1]
    nc = geom.n_cand
    if m.kind == "random":
        return None, None
    if m.kind == "window":
        return np.tile(np.arange(nc - 1, -1, -1), (hq, 1)), None
    if m.kind == "oracle":
        with np.errstate(divide="ignore"):
            return _order_from_scores(np.log(searched_mass(p, geom)), m.cfg.shared_gqa, g), None
    if m.kind == "oracle-op":
        with np.errstate(divide="ignore"):
            lg = np.log(p[:, : nc * geom.seg_len])  # log p = logit - logsumexp: same ranking as the op's
        sc = ref._logsumexp(lg.reshape(hq, nc, geom.seg_len), axis=2)
        return _order_from_scores(sc, m.cfg.shared_gqa, g), None
    if m.kind in ("lowrank", "sparq"):
        scores = lowrank_scores if m.kind == "lowrank" else sparq_scores
        sc = scores(cap, k64, valid, geom, int(m.option("r")), cache)
        order = _order_from_scores(sc, False, g)
        return _two_stages(m, cap, order, geom, k64, valid)
    score = m.cfg.score_id
    omega = None
    if score == ref.SCORE_RF:
        if cap.omega is not None and cap.omega.shape[1] == m.cfg.n_feat:
            omega = cap.omega  # the library's own projection
        else:
            omega = cache.omega(k64.shape[2], m.cfg.n_feat, m.cfg.seed)
    s = cache.get(cap.layer, k64, valid, geom.seg_len, geom.n_seg, score, cap.scale, omega)
    if score == ref.SCORE_UNION:  # the first n_c: half by meanvar, the rest by minmax
        n_c = geom.n_rescored(m.cfg.rescore) if m.cfg.rescore > 1 else geom.k_sel
        order = ref.union_ranking(cap.q, s[:nc], cap.scale, m.cfg.shared_gqa, n_c)
    else:
        sc = ref.segment_scores(cap.q, s[:nc], score, cap.scale, omega)  # [Hq, nc]
        order = _order_from_scores(sc, m.cfg.shared_gqa, g)
    if m.kind == "mass":
        return order, mass_target_count(m, cap, sc, order, geom, k64, valid)
    if m.kind == "twostage":
        return twostage_order(m.option("cand"), cap, order, geom, k64), None
    if m.kind == "adaptive":
        order, keep, n_c = adaptive_order(m, cap, sc, order, geom, k64, valid)
        if info is not None:
            info["n_rescored"] = n_c
        return order, keep
    return _two_stages(m, cap, order, geom, k64, valid)


def _two_stages(
    m: Method, cap: AttnCapture, order: np.ndarray, geom: Geometry, k64: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Stage one's ranking ``order`` through the library's stage two as ``m`` configures it."""
    if m.cfg.rescore > 1 and m.cfg.mass_target > 0:  # the library's two stages with a mass target
        return mass_target_order(m, cap, order, geom, k64, valid)
    if m.cfg.rescore > 1:  # the library's two-stage selection
        return twostage_order(m.cfg.rescore, cap, order, geom, k64), None
    return order, None


def _sketch_cells(kind: str, r: int, k64: np.ndarray, valid: np.ndarray, geom: Geometry) -> np.ndarray:
    """``[n_cand * L]`` bool: the cells a sketch ranking leaves out (unused ones, and the sinks: attended
    anyway); checks the sketch's size ``r`` against the head size first."""
    if not 1 <= r <= k64.shape[2]:
        raise ValueError(f"{kind}: r must be between 1 and the head size {k64.shape[2]}, got {r}")
    n = geom.n_cand * geom.seg_len
    dead = ~valid[:n]
    dead[: min(geom.n_sink, n)] = True
    return dead


def _segment_lse(cap: AttnCapture, lg: np.ndarray, dead: np.ndarray, geom: Geometry) -> np.ndarray:
    """``[..., n_cand]``: sketched logits ``[..., n_cand * L]`` softcapped as the model's (no ALiBi), the dead
    cells dropped, log-sum-exp'd per segment."""
    if cap.softcap:
        lg = cap.softcap * np.tanh(lg / cap.softcap)
    lg[..., dead] = -np.inf
    return ref._logsumexp(lg.reshape(*lg.shape[:-1], geom.n_cand, geom.seg_len), axis=-1)


def sparq_scores(
    cap: AttnCapture, k64: np.ndarray, valid: np.ndarray, geom: Geometry, r: int, cache: SummaryCache
) -> np.ndarray:
    """``[Hq, n_cand]``: the log of each candidate segment's attention mass with every logit computed from the
    ``r`` channels where the query head's ``|q|`` is largest (keys rounded to f16, as cached), at the
    temperature SparQ Attention uses, ``scale / sqrt(share)`` with ``share`` the part of ``|q|_1`` in those
    channels. The sinks count nothing."""
    del cache  # nothing to keep between steps: the channels follow each query
    dead = _sketch_cells("sparq", r, k64, valid, geom)
    n, g = len(dead), cap.q.shape[0] // k64.shape[1]
    q = cap.q.astype(np.float64)
    out = np.empty((q.shape[0], geom.n_cand))
    for h in range(q.shape[0]):
        idx = np.argsort(-np.abs(q[h]), kind="stable")[:r]
        share = np.abs(q[h, idx]).sum() / max(np.abs(q[h]).sum(), 1e-30)
        with np.errstate(invalid="ignore"):  # unused cells may hold NaN keys
            lg = cap.scale / np.sqrt(share) * (k64[:n, h // g][:, idx] @ q[h, idx])  # [n]
        out[h] = _segment_lse(cap, lg, dead, geom)
    return out


def lowrank_scores(
    cap: AttnCapture, k64: np.ndarray, valid: np.ndarray, geom: Geometry, r: int, cache: SummaryCache
) -> np.ndarray:
    """``[Hq, n_cand]``: the log of each candidate segment's attention mass with every logit computed from a
    rank-``r`` sketch of its key, ``scale (q.mu + (q P).c)`` with ``c = P^T (k - mu)`` rounded to f16 (the
    basis ``P`` and mean ``mu`` of ``SummaryCache.basis``). The sinks count nothing (attended anyway)."""
    dead = _sketch_cells("lowrank", r, k64, valid, geom)
    n, hkv = len(dead), k64.shape[1]
    g = cap.q.shape[0] // hkv
    mu, basis = cache.basis(cap.layer, k64, valid, r)
    q = cap.q.astype(np.float64)
    out = np.empty((q.shape[0], geom.n_cand))
    for h in range(hkv):
        with np.errstate(invalid="ignore"):  # unused cells may hold NaN keys
            c = ((k64[:n, h, :] - mu[h]) @ basis[h]).astype(np.float16).astype(np.float64)  # [n, r]
        qh = q[h * g : (h + 1) * g]  # [g, D]
        lg = cap.scale * ((qh @ mu[h])[:, None] + (qh @ basis[h]) @ c.T)  # [g, n]
        out[h * g : (h + 1) * g] = _segment_lse(cap, lg, dead, geom)
    return out


def _exact_logits(cap: AttnCapture, k64: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``[Hq, len(cells)]`` scaled logits ``scale q.k`` of every query head on the keys of ``cells``."""
    hq, hkv = cap.q.shape[0], k64.shape[1]
    g = hq // hkv
    q = cap.q.astype(np.float64)
    out = np.empty((hq, len(cells)))
    for h in range(hkv):
        out[h * g : (h + 1) * g] = cap.scale * q[h * g : (h + 1) * g] @ k64[cells, h, :].T
    return out


def mass_target_count(
    m: Method,
    cap: AttnCapture,
    sc: np.ndarray,
    order: np.ndarray,
    geom: Geometry,
    k64: np.ndarray,
    valid: np.ndarray,
) -> np.ndarray:
    """Candidates each head keeps under a mass target: the best-ranked segments until their *estimated*
    share of the attention mass reaches ``p``, between ``floor`` and ``ceil`` tokens. ``[Hq]`` int."""
    L, nc = geom.seg_len, geom.n_cand
    need = estimated_need(cap, sc, order, geom, k64, valid, m.option("p"))
    lo = min(nc, int(m.option("floor") // L))
    hi = min(nc, max(lo, int(m.option("ceil") // L)))
    return np.clip(need, lo, hi).astype(np.int64)


def estimated_need(
    cap: AttnCapture,
    sc: np.ndarray,
    order: np.ndarray,
    geom: Geometry,
    k64: np.ndarray,
    valid: np.ndarray,
    p: float,
) -> np.ndarray:
    """How many of the best-ranked segments each head needs for their *estimated* share of the attention mass
    to reach ``p``, ``[Hq]`` int. A meanvar score is the log of a segment's estimated mean ``exp(scale q.k)``,
    so a segment's estimated mass is ``L exp(score)``; the always-attended cells (sinks, window, tail) count
    with their exact mass, which the attention pass computes anyway."""
    always = np.flatnonzero(geom.always(len(valid)) & valid)
    la = ref._logsumexp(_exact_logits(cap, k64, always), axis=1)  # [Hq] log mass of the always-attended cells
    return ref.estimated_need(np.take_along_axis(sc, order, axis=1), la, geom.seg_len, p)


def adaptive_order(
    m: Method,
    cap: AttnCapture,
    sc: np.ndarray,
    order: np.ndarray,
    geom: Geometry,
    k64: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two stages with a per-head candidate count: each head rescores its best-ranked segments until their
    estimated share reaches ``p1`` (``estimated_need``), at least ``rescore x top_k`` and at most ``cmax x
    top_k``; stage two keeps by the mass target (``reference.mass_target_select``, per head). A spread head
    reads more keys, a sharp one ``rescore x top_k``. Returns the ranking ``[Hq, n_cand]``, the kept counts
    and the rescored counts, ``[Hq]`` each."""
    hq = cap.q.shape[0]
    lo = geom.n_rescored(max(m.cfg.rescore, 1.0))
    hi = max(lo, geom.n_rescored(m.option("cmax")))
    n_c = np.clip(estimated_need(cap, sc, order, geom, k64, valid, m.option("p1")), lo, hi).astype(np.int64)
    with np.errstate(invalid="ignore"):  # unused cells may hold NaN keys
        logits = np.where(valid[None, :], _exact_logits(cap, k64, np.arange(len(valid))), -np.inf)
    always = geom.always(len(valid))
    out, keep = order.copy(), np.empty(hq, dtype=np.int64)
    for h in range(hq):
        c = int(n_c[h])
        ranked, kp, _ = ref.mass_target_select(
            order[h : h + 1, :c], logits[h : h + 1], always, geom.seg_len, geom.n_sink, False, 1, geom.k_sel,
            m.cfg.mass_target if m.cfg.mass_target > 0 else 1e-9,
        )  # fmt: skip
        out[h, :c], keep[h] = ranked[0], kp[0]
    return out, keep, n_c


def mass_target_order(
    m: Method, cap: AttnCapture, order: np.ndarray, geom: Geometry, k64: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The library's two stages with a mass target (``reference.mass_target_select``) on the captured keys:
    the ranking ``[Hq, n_cand]`` with the rescored candidates first by exact share, and how many of them
    each head keeps ``[Hq]``."""
    hq, hkv = cap.q.shape[0], k64.shape[1]
    n_c = geom.n_rescored(m.cfg.rescore)
    if n_c <= geom.k_sel:
        return order, None
    with np.errstate(invalid="ignore"):  # unused cells may hold NaN keys
        logits = np.where(valid[None, :], _exact_logits(cap, k64, np.arange(len(valid))), -np.inf)
    ranked, keep, _ = ref.mass_target_select(
        order[:, :n_c],
        logits,
        geom.always(len(valid)),
        geom.seg_len,
        geom.n_sink,
        m.cfg.shared_gqa,
        hq // hkv,
        geom.k_sel,
        m.cfg.mass_target,
    )
    out = order.copy()
    out[:, :n_c] = ranked
    return out, keep


def twostage_order(
    cand: float, cap: AttnCapture, order: np.ndarray, geom: Geometry, k64: np.ndarray
) -> np.ndarray:
    """Two-stage selection: the summaries' ``cand x top_k`` best candidates are rescored exactly (log of the
    segment's attention mass from its keys, which stage two reads), and ranked first by that; the rest
    keep the summaries' order. ``[Hq, n_cand]``. Stage two ranks per head (the library's shared mode
    combines the group's exact scores; see ``reference.rescore_exact``)."""
    L = geom.seg_len
    n_c = geom.n_rescored(cand)
    hq = order.shape[0]
    out = order.copy()
    for h in range(hq):
        c = order[h, :n_c]  # candidate segments of head h
        cells = (c[:, None] * L + np.arange(L)[None, :]).ravel()
        lg = _exact_logits(cap, k64, cells)[h].reshape(n_c, L)
        if geom.n_sink:  # the sinks are attended anyway: they do not make their segment a better pick
            lg[cells.reshape(n_c, L) < geom.n_sink] = -np.inf
        exact = ref._logsumexp(lg, axis=1)  # [n_c]
        out[h, :n_c] = c[np.argsort(-exact, kind="stable")]
    return out
