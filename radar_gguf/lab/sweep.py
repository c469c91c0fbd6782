"""Quality against cost: ``eval sweep`` joins perplexity records with the attention bytes each config
reads per decode step (K/V of the attended cells + the summaries scored) and its selection metrics, and
plots delta ppl against bytes (the Pareto front).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..sizes import format_size
from .ppl import corpus_of
from .records import RESULTS, add_model_args, parse_config, pyplot, sizes
from .selection import kv_bytes_per_step

SWEEP_HITS = ("hit@1", "hit@3", "mass", "mass_searched", "attended_union")


def sweep_records(
    ppl: Sequence[dict], selection: Sequence[dict], shape: dict, context: int, n_score: int
) -> list[dict]:
    """One record per config with a ppl record at ``context``/``n_score`` (the first record of a mode wins):
    delta ppl vs dense (the record's own ``delta_pct``, measured against the dense run of its command; else
    against the dense record of the same model and offset, flagged ``dense_same_command: false``), attention
    bytes read per decode step (``selection.kv_bytes_per_step``; the measured per-KV-head union of attended
    cells where a selection record of the same spec exists), and the selection metrics of that spec."""
    rows, seen = [], set()
    for r in ppl:
        if (
            r["context"] == context
            and r.get("n_scored") == n_score
            and r["metric"] == "ppl"
            and r["mode"] not in seen
        ):
            seen.add(r["mode"])
            rows.append(r)
    dense_any = {(r["model"], r.get("offset", 0)): r["value"] for r in rows if r["mode"] == "dense"}
    sel = {(r["mode"], r["metric"]): r for r in selection if r["context"] == context}
    n_kv = context + n_score // 2  # the middle of the scored window
    d_bytes = kv_bytes_per_step(None, n_kv=n_kv, **shape)
    out = []
    for r in rows:
        own = r.get("delta_pct") is not None
        d_ppl = (
            r["value"] / (1.0 + r["delta_pct"] / 100.0)
            if own
            else dense_any.get((r["model"], r.get("offset", 0)))
        )
        if d_ppl is None:
            continue
        cfg = parse_config(r["mode"])
        # the library's ORACLE score is the selection method "oracle-op" ("oracle" there is the upper bound)
        sel_mode = "oracle-op" + r["mode"][len("oracle") :] if r["mode"].startswith("oracle") else r["mode"]
        union = sel.get((sel_mode, "attended_union"))
        bound = kv_bytes_per_step(cfg, n_kv=n_kv, **shape)
        meas = kv_bytes_per_step(
            cfg, n_kv=n_kv, union_cells_per_kv_head=union["value"] if union else None, **shape
        )
        total = meas["kv"] + meas["summaries"] + meas["rescore"]
        rec = {
            "model": r["model"],
            "context": context,
            "metric": "ppl_delta_vs_bytes",
            "mode": r["mode"],
            "value": round(100.0 * (r["value"] / d_ppl - 1.0), 3) if cfg.enabled else 0.0,
            "ppl": r["value"],
            "delta_se_pct": r.get("delta_se_pct"),
            "dense_ppl": round(d_ppl, 4),
            "dense_same_command": own or r["mode"] == "dense",
            "n_scored": n_score,
            "attended": r.get("attended"),  # cells one query head attends at the last scored step
            "bytes_per_step": int(total),
            "bytes_kv": int(meas["kv"]),
            "bytes_summaries": int(meas["summaries"]),
            "bytes_rescore": int(meas["rescore"]),
            "bytes_bound": int(bound["kv"] + bound["summaries"] + bound["rescore"]),
            "bytes_measured": union is not None or not cfg.enabled,
            "bytes_vs_dense": round(total / d_bytes["kv"], 4),
            "cells_per_kv_head": round(meas["cells_per_kv_head"], 1),
            "params": r["params"],
            "command": r["command"],
        }
        for met in SWEEP_HITS:
            if (sel_mode, met) in sel:
                rec[met] = sel[(sel_mode, met)]["value"]
        out.append(rec)
    return out


def sweep_plot(recs: Sequence[dict], path: Path) -> Optional[Path]:
    """Delta ppl (%) against the cells a query head attends per decode step (the budget's axis; bytes per
    step, which also depend on how far the heads of a group agree, are in the table): one labelled point
    per config, one colour per corpus when the records span several (each corpus's meanvar budgets joined
    by a line)."""
    plt = pyplot()
    if plt is None:
        return None
    corpora = list(dict.fromkeys(r.get("corpus", "essays") for r in recs))
    colour = {c: f"C{i}" for i, c in enumerate(corpora)}
    marker = {"meanvar": "o", "mean": "s", "minmax": "^", "rf": "v", "oracle": "*"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in recs:
        x = r["attended"] or r["bytes_per_step"]
        if r["params"].get("enabled") is False:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
            ax.text(x, 0, " dense", fontsize=7, color="grey")
            continue
        c = r.get("corpus", "essays")
        ax.scatter(x, r["value"], s=22, c=colour[c], marker=marker.get(r["params"]["score"], "x"))
        if len(corpora) == 1:
            ax.annotate(r["mode"], (x, r["value"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for c in corpora:  # the budget line of the default score
        line = sorted(
            (r["attended"] or r["bytes_per_step"], r["value"])
            for r in recs
            if r.get("corpus", "essays") == c
            and r["params"].get("score") == "meanvar"
            and ":" in r["mode"] + ":"
            and set(r["mode"].partition(":")[2].split("=")[0:1]) <= {"", "token_budget"}
        )
        if line:
            ax.plot(*zip(*line), color=colour[c], lw=0.8, label=c)
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(1, color="r", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("cells a query head attends per decode step (dense: the whole context)")
    ax.set_ylabel("perplexity vs dense (%)")
    ax.set_title(
        f"{recs[0]['model']}, {format_size(recs[0]['context'])} context, M = {recs[0]['n_scored']} per corpus"
        + ("; stars: oracle ranking" if len(corpora) > 1 else ""),
        fontsize=9,
    )
    if len(corpora) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_sweep_args(pw: argparse.ArgumentParser) -> None:
    add_model_args(pw)
    pw.add_argument("--context", default="16k", help="context of the records to join (default: %(default)s)")
    pw.add_argument(
        "-m", "--n-score", type=int, default=256, help="ppl records with this M (default: %(default)s)"
    )
    pw.add_argument(
        "--corpus",
        default="essays",
        help="ppl records of this corpus, several (comma separated) or all (default: %(default)s)",
    )
    pw.add_argument(
        "--ppl", type=Path, action="append", help="ppl record files (default: docs/results/quality-ppl.json)"
    )
    pw.add_argument(
        "--selection", type=Path, default=RESULTS / "quality-selection.json", help="selection records"
    )
    pw.add_argument("--out", type=Path, default=None, help="write the joined records here (JSON list)")
    pw.add_argument("--plot", type=Path, default=None, help="PNG of delta ppl vs bytes read")


def main_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..engine import resolve_model_path
    from ..gguf_check import check_gguf

    info = check_gguf(resolve_model_path(args.model, progress=False))
    shape = {
        "n_layer": info.n_layer,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "head_dim": info.head_dim,
    }
    context = sizes(args.context, parser, "--context")[0]
    ppl = [r for f in (args.ppl or [RESULTS / "quality-ppl.json"]) for r in json.loads(f.read_text())]
    name = resolve_model_path(args.model, progress=False).name
    ppl = [r for r in ppl if r.get("model", name) == name]
    selection = json.loads(args.selection.read_text()) if args.selection and args.selection.exists() else []
    corpora = (
        list(dict.fromkeys(corpus_of(r) for r in ppl))
        if args.corpus == "all"
        else [c.strip() for c in args.corpus.split(",") if c.strip()]
    )
    recs = []
    for c in corpora:
        rows = sweep_records(
            [r for r in ppl if corpus_of(r) == c],
            [r for r in selection if corpus_of(r) == c],
            shape,
            context,
            args.n_score,
        )
        recs += [{**r, "corpus": c} for r in sorted(rows, key=lambda r: r["bytes_per_step"])]
    if not recs:
        parser.error(f"no ppl records of {name} at {args.context} with M = {args.n_score} in {args.corpus}")
    cols = ("hit@1", "hit@3", "mass", "mass_searched")
    print(
        "| corpus | config | ppl | vs dense | MB read / step | vs dense | cells / KV head | "
        + " | ".join(cols)
        + " |"
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(cols))
    for r in recs:
        hits = " | ".join(f"{r[c]:.3f}" if c in r else "" for c in cols)
        print(
            f"| {r['corpus']} | {r['mode']} | {r['ppl']:.3f} | {r['value']:+.2f}%"
            + (f" ± {r['delta_se_pct']:.1f}" if r.get("delta_se_pct") and r["mode"] != "dense" else "")
            + f" | {r['bytes_per_step'] / 1e6:.2f} "
            f"{'' if r['bytes_measured'] else '(bound) '}| {r['bytes_vs_dense']:.3f} | {r['cells_per_kv_head']:.0f} | {hits} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(recs, indent=1) + "\n")
        print(f"records written to {args.out}")
    if args.plot and sweep_plot(recs, args.plot):
        print(f"plot: {args.plot}")
    return 0
