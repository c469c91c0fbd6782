"""Radar parameters (RadarConfig) and per-step statistics (RadarStats)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

SCORES = ("rf", "mean", "meanvar", "minmax", "oracle", "union")  # index = enum llama_radar_score
SUMMARY_TYPES = {"f32": 0, "f16": 1}  # name -> enum ggml_type
# dense_below=-1: the library's thresholds (LLAMA_RADAR_DENSE_BELOW_CPU/_GPU in llama.h)
DENSE_BELOW_CPU = 12288
DENSE_BELOW_GPU = 65536


def _spec_value(text: str) -> object:
    """A spec's value: true/false, an int, a float, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


@dataclass
class RadarConfig:
    """How Radar attends at decode time. The defaults are the measured choice (docs/quality.md).

    Attributes:
        enabled: use Radar at decode once the context holds ``dense_below`` tokens.
        score: segment score: ``"meanvar"`` (mean key + per-channel variance), ``"mean"``,
            ``"minmax"`` (Quest-style bound), ``"rf"`` (the paper's random features, log domain),
            ``"oracle"`` (exact attention mass; evaluation only, reads every key), ``"union"`` (stage
            one takes half its candidates by ``meanvar`` and the rest by ``minmax``: summaries of both,
            twice the bytes; CPU, CUDA and Metal; docs/quality.md).
        n_feat: random features m for ``score="rf"`` (2m features per key; the paper uses 16*head_dim).
        top_k: segments selected per decode step; 0 means ``token_budget // segment_length``.
        token_budget: tokens selected per step when ``top_k`` is 0.
        n_sink: leading tokens always attended (attention sinks).
        n_recent: trailing tokens always attended (rounded up to whole segments).
        aspect: segment length is ``max(seg_len_min, sqrt(t) / aspect)`` for t cached tokens. The
            default 8 (L = 22 at 32k, 45 at 128k) was chosen by measurement over 2 (the paper's
            shape): better perplexity and needle retrieval at 32k for about 5% of GPU decode speed
            (docs/quality.md, docs/performance.md).
        seg_len_min: smallest segment length.
        dense_below: decode stays dense (exact) while the context holds fewer tokens; -1 (default)
            picks it by where the KV cache lives: 12288 on the CPU, 65536 on a GPU (measured
            crossovers, docs/performance.md). ``Model.radar`` reports the value chosen.
        seed: random-feature seed.
        shared_gqa: one selection per KV head (shared by its query heads) instead of per query head.
        summary_type: storage of the segment summaries, ``"f16"`` (default: half the memory and the
            bytes the score reads each step of ``"f32"``, values saturate at +-65504; no loss measured,
            docs/quality.md) or ``"f32"``.
        budget_max_scale: a model whose KV cache holds only a fraction f of its layers (the global
            layers of sliding-window models such as Gemma 3, the attention layers of hybrids)
            selects ``token_budget * min(1/f, budget_max_scale)`` tokens in them: the bytes a
            full-attention model of the same depth reads with ``token_budget`` (Gemma 3: 6x, 6144
            tokens) up to the cap (default 8). 1 turns it off (docs/quality.md).
        rescore: two-stage selection: the ``rescore * top_k`` best segments by summary score are
            rescored exactly from their keys (the log of their attention mass) and the ``top_k`` best of
            those are attended. It reads ``rescore * token_budget`` more keys per query head and step.
            The default 4 was chosen by measurement over one stage, 2 and 8 on five corpora and two
            models: one stage lost +12% on a Japanese text where 4 loses +0.6% (docs/quality.md).
            0 (or 1): one stage.
        mass_target: adaptive budget of the two stages, a share p in (0, 1] or 0 (a fixed budget):
            past the ``top_k`` best rescored candidates, more are attended, best first, up to all of
            them, until the attended cells hold the share p of the exact attention mass the two stages
            know of (the candidates and the always-attended cells). Heads whose attention is spread read
            more; sharp heads stay at ``top_k``. The default 0.99 was chosen by measurement on five
            corpora, a held-out split and two models: the KJV Bible went from +3.5% to +1.9%, pooled from
            +1.1% to +0.3%, for about twice the attended tokens on real text (docs/quality.md). With one
            stage (``rescore`` 0) there is no stage two and it has no effect. On a GPU stage two takes at
            most 2048 candidates with a mass target (``rescore * top_k``).
        rescore_max, rescore_mass: an adaptive candidate count for the two stages (off by default:
            ``rescore_mass`` 0). Each query head rescores its best segments by summary score, best first,
            until their estimated share of the attention mass (a segment's estimate is
            ``seg_len * exp(score)``, the always-attended cells count exactly) reaches ``rescore_mass``,
            between ``rescore * top_k`` and ``rescore_max * top_k`` of them: heads whose attention is
            spread read more keys, sharp heads ``rescore * top_k``. Needs two stages, ``rescore_max >
            rescore`` and per-head selection (not ``shared_gqa``). The CPU kernel has it; a KV cache on a
            GPU (CUDA, Metal) refuses it (docs/quality.md measures it).
    """

    enabled: bool = True
    score: str = "meanvar"
    n_feat: int = 64
    top_k: int = 0
    token_budget: int = 1024
    n_sink: int = 1
    n_recent: int = 32
    aspect: float = 8.0
    seg_len_min: int = 16
    dense_below: int = -1
    seed: int = 1234
    shared_gqa: bool = False
    summary_type: str = "f16"
    budget_max_scale: float = 8.0
    rescore: float = 4.0
    mass_target: float = 0.99
    rescore_max: float = 0.0
    rescore_mass: float = 0.0

    def validate(self) -> RadarConfig:
        """Raise ValueError naming the first parameter out of range; return self."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"RadarConfig.{name}={getattr(self, name)!r}: {why}")

        if self.score not in SCORES:
            bad("score", f"must be one of {', '.join(SCORES)}")
        if self.summary_type not in SUMMARY_TYPES:
            bad("summary_type", f"must be one of {', '.join(SUMMARY_TYPES)}")
        for name, lo, hi in (
            ("n_feat", 1, 65536),
            ("top_k", 0, 1 << 24),
            ("token_budget", 1, 1 << 28),
            ("n_sink", 0, 1 << 24),
            ("n_recent", 0, 1 << 28),
            ("seg_len_min", 1, 65536),
            ("dense_below", -1, 1 << 31 - 1),
            ("seed", 0, (1 << 32) - 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(name, "must be an integer")
            if not lo <= v <= hi:
                bad(name, f"must be in [{lo}, {hi}]")
        if isinstance(self.aspect, bool) or not isinstance(self.aspect, (int, float)):
            bad("aspect", "must be a number")
        if not 0.0625 <= float(self.aspect) <= 1024:
            bad("aspect", "must be in [0.0625, 1024]")
        if isinstance(self.budget_max_scale, bool) or not isinstance(self.budget_max_scale, (int, float)):
            bad("budget_max_scale", "must be a number")
        if not 1 <= float(self.budget_max_scale) <= 64:
            bad("budget_max_scale", "must be in [1, 64]")
        if isinstance(self.rescore, bool) or not isinstance(self.rescore, (int, float)):
            bad("rescore", "must be a number")
        if not (float(self.rescore) == 0 or 1 <= float(self.rescore) <= 64):
            bad("rescore", "must be 0 (one stage) or in [1, 64]")
        if isinstance(self.mass_target, bool) or not isinstance(self.mass_target, (int, float)):
            bad("mass_target", "must be a number")
        if not 0 <= float(self.mass_target) <= 1:
            bad("mass_target", "must be in [0, 1] (0: a fixed budget)")
        for name in ("rescore_max", "rescore_mass"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad(name, "must be a number")
        if not (float(self.rescore_max) == 0 or 1 <= float(self.rescore_max) <= 64):
            bad("rescore_max", "must be 0 or in [1, 64]")
        if not 0 <= float(self.rescore_mass) <= 1:
            bad("rescore_mass", "must be in [0, 1] (0: a fixed candidate count)")
        if self.rescore_max and not self.rescore_mass:
            bad("rescore_max", "has no effect without rescore_mass (the adaptive candidate count)")
        if self.rescore_mass > 0:
            if not self.rescore > 1:
                bad("rescore_mass", "needs two stages (rescore > 1)")
            if not self.rescore_max > self.rescore:
                bad(
                    "rescore_mass",
                    f"needs rescore_max > rescore ({self.rescore:g}), got {self.rescore_max:g}",
                )
            if self.shared_gqa:
                bad("rescore_mass", "needs per-head selection (shared_gqa off)")
            if self.score == "union":
                bad("rescore_mass", "needs one summary score (its estimate), not union")
        return self

    @property
    def score_id(self) -> int:
        return SCORES.index(self.score)

    def replace(self, **changes: object) -> RadarConfig:
        """A copy with some fields changed (unknown names raise TypeError)."""
        d = asdict(self)
        for k in changes:
            if k not in d:
                raise TypeError(f"RadarConfig has no parameter {k!r}")
        d.update(changes)
        return RadarConfig(**d)  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, spec: str, base: Optional[RadarConfig] = None) -> RadarConfig:
        """``dense`` or ``SCORE[:key=value,...]`` (field names of this class) -> a validated config: the
        fields named changed from ``base`` (default: the defaults). Raises ValueError on a bad spec."""
        spec = spec.strip()
        if spec == "dense":
            return cls(enabled=False)
        name, _, rest = spec.partition(":")
        if name not in SCORES:
            raise ValueError(f"config {spec!r}: name must be 'dense' or one of {', '.join(SCORES)}")
        changes: dict[str, object] = {"score": name, "enabled": True}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"config {spec!r}: expected key=value, got {item!r}")
            changes[key.strip()] = _spec_value(value.strip())
        try:
            return (base or cls()).replace(**changes).validate()
        except TypeError as e:
            raise ValueError(f"config {spec!r}: {e}") from None

    def dense_below_text(self) -> str:
        if self.dense_below >= 0:
            return str(self.dense_below)
        return f"{DENSE_BELOW_CPU} (CPU) / {DENSE_BELOW_GPU} (GPU)"

    def _stages_text(self) -> str:
        if self.rescore <= 1:
            return ", one stage"
        if self.rescore_mass > 0:
            return (
                f", two stages ({self.rescore:g}-{self.rescore_max:g}x candidates to an estimated "
                f"{self.rescore_mass:g} of the mass)"
            )
        return f", two stages ({self.rescore:g}x candidates)"

    def describe(self) -> str:
        if not self.enabled:
            return "radar off (dense attention)"
        sel = f"top-{self.top_k} segments" if self.top_k else f"{self.token_budget}-token budget"
        return (
            f"radar on above {self.dense_below_text()} tokens: {self.score} score, {sel}, "
            f"{self.n_sink} sink + {self.n_recent} recent, aspect {self.aspect:g}"
            + self._stages_text()
            + (f", mass target {self.mass_target:g}" if self.rescore > 1 and self.mass_target > 0 else "")
            + (", GQA-shared" if self.shared_gqa else "")
            + (f", {self.summary_type} summaries" if self.summary_type != "f16" else "")
        )


@dataclass
class RadarStats:
    """Counters from the library (llama_radar_stats); ``n_attended`` vs ``n_kv`` is the saving. With a mass
    target ``n_attended`` and ``n_seg_selected`` count the budget (the floor): the kernels attend more where
    attention is spread, up to ``n_rescored`` more cells (``eval select`` measures how many). With an adaptive
    candidate count (``rescore_mass``) ``n_rescored`` counts its floor."""

    n_decode_radar: int = 0
    n_restructure: int = 0
    n_seg_summarized: int = 0
    seg_len: int = 0
    n_seg: int = 0
    n_seg_selected: int = 0
    n_attended: int = 0
    n_kv: int = 0
    n_rescored: int = 0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
