"""``eval select``: selection quality at sampled decode steps of a real model (see ``selection``): capture,
evaluate every method, print tables, write records and per-layer plots.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..sizes import format_size
from . import methods as meth
from . import selection as sel
from .capture import Capture, eval_callback
from .context import add_cache_args, add_text_args, cache_dir, text_sources
from .records import (
    DENSE,
    add_model_args,
    device_name,
    log,
    merge_records,
    params_of,
    parse_config,
    pyplot,
    sizes,
    split_specs,
)

SELECT_COLUMNS = (
    "hit@1",
    "hit@3",
    "seg@1",
    "seg@3",
    "tok@8",
    "tok_all@8",
    "mass",
    "mass_searched",
    "out_err",
    "attended",
    "attended_union",
    "keys_scored",
)


def add_select_args(ps: argparse.ArgumentParser) -> None:
    add_model_args(ps)
    add_text_args(ps, many=False)
    ps.add_argument(
        "--contexts", default="16k", help="prefilled context lengths, comma separated (default: %(default)s)"
    )
    ps.add_argument("--steps", type=int, default=12, help="decode steps captured (default: %(default)s)")
    ps.add_argument(
        "--stride", type=int, default=4, help="decode steps between captures (default: %(default)s)"
    )
    ps.add_argument(
        "--capture",
        default="meanvar",
        help="Radar config the model decodes with while capturing (default: %(default)s)",
    )
    ps.add_argument(
        "--methods",
        default=None,
        help="selection methods NAME[:key=value,...] (names: "
        + ", ".join(meth.METHODS)
        + "; fields default to --capture's) (default: "
        + sel.DEFAULT_METHODS
        + ")",
    )
    ps.add_argument(
        "--offset", type=int, default=0, help="start this many tokens into the text (default: %(default)s)"
    )
    ps.add_argument(
        "--no-check", action="store_true", help="skip the NumPy-vs-kernel check of the capture config"
    )
    ps.add_argument(
        "--check-steps",
        type=int,
        default=4,
        help="captures checked against the kernel (default: %(default)s)",
    )
    add_cache_args(ps)
    ps.add_argument(
        "--out",
        type=Path,
        default=None,
        help="merge records into this JSON list (e.g. docs/results/quality-selection.json)",
    )
    ps.add_argument("--plot-dir", type=Path, default=None, help="write per-layer PNG plots here")


def main_select(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    """``eval select``: capture, evaluate, print tables, write records and plots."""
    from ..engine import load

    contexts = sizes(args.contexts, parser, "--contexts")
    sources = text_sources(args, parser)
    if len(sources) != 1:
        parser.error("eval select takes one text: --text FILE or --corpus NAME")
    src = sources[0]
    device = args.device or device_name()
    try:
        capture_cfg = parse_config(args.capture)
        if not capture_cfg.enabled:
            raise ValueError("the capture config must have Radar on (a score name, not 'dense')")
        methods = [
            meth.parse_method(s, capture_cfg) for s in split_specs(args.methods or sel.DEFAULT_METHODS)
        ]
    except ValueError as e:
        parser.error(str(e))
    if capture_cfg.dense_below > contexts[0]:
        parser.error(
            f"--capture dense_below={capture_cfg.dense_below} is above the context {contexts[0]}: "
            "no radar_attn node would run"
        )
    n_extra = (args.steps - 1) * args.stride + 1
    capture = Capture()
    records: list[dict] = []
    with eval_callback(capture.c_callback):
        model = load(
            args.model,
            ctx=contexts[-1] + n_extra + 16,
            radar=DENSE,
            threads=args.threads,
            gpu_layers=args.gpu_layers,
        )
    with model:
        all_toks = src.tokens(model, contexts[-1] + n_extra, args.offset)
        log(
            f"# {model.path.name} on {device}: selection at {args.contexts}, {args.steps} steps every "
            f"{args.stride}, decoding with {args.capture}"
        )
        for n in contexts:
            run = sel.run_selection(
                model,
                capture,
                all_toks[: n + n_extra],
                n,
                args.steps,
                args.stride,
                capture_cfg,
                methods,
                cache_dir=cache_dir(args),
                check_steps=0 if args.no_check else args.check_steps,
                n_layer=model.info.n_layer or 0,
            )
            summ = sel.summarize_steps(run.steps)
            print(
                f"\n### {format_size(n)}: mean over {len(summ['layers'])} layers, {args.steps} steps, all query heads\n"
            )
            print("| method | L | top-k | " + " | ".join(SELECT_COLUMNS) + " |")
            print("|---|---|---|" + "---|" * len(SELECT_COLUMNS))
            for m in methods:
                g = run.geometry[m.spec]
                vals = [summ["mean"][m.spec][c] for c in SELECT_COLUMNS]
                cells = [
                    f"{v:.0f}" if c.startswith(("attended", "keys")) else sel.fmt(v)
                    for c, v in zip(SELECT_COLUMNS, vals)
                ]
                print(f"| {m.spec} | {g['seg_len']} | {g['top_k']} | " + " | ".join(cells) + " |")
            print(
                "| paper (Radar, Llama 3.1, PG-19) | | | "
                + " | ".join(sel.fmt(sel.PAPER.get(c, float("nan"))) for c in SELECT_COLUMNS)
                + " |"
            )
            plain = [m for m in methods if ":" not in m.spec] or list(methods)
            print(
                "\nper layer (hit@1 / mass_searched):\n\n| layer | "
                + " | ".join(m.spec for m in plain)
                + " |"
            )
            print("|---|" + "---|" * len(plain))
            for i, il in enumerate(summ["layers"]):
                cells = [
                    f"{summ['per_layer'][m.spec]['hit@1'][i]:.2f} / {summ['per_layer'][m.spec]['mass_searched'][i]:.2f}"
                    for m in plain
                ]
                print(f"| {il} | " + " | ".join(cells) + " |")
            if summ["check"]:
                print(
                    "\nkernel check ("
                    + args.capture
                    + "): "
                    + ", ".join(
                        f"{k} {stat} {v:.3g}" for k, d in summ["check"].items() for stat, v in d.items()
                    )
                )
            base = {
                "model": model.path.name,
                "corpus": src.name,
                "context": n,
                "capture": args.capture,
                "n_steps": args.steps,
                "stride": args.stride,
                "offset": args.offset,
                "device": device,
                "command": command.strip(),
            }
            for m in methods:
                g = run.geometry[m.spec]
                for met, v in summ["mean"][m.spec].items():
                    records.append(
                        {
                            **base,
                            "metric": met,
                            "mode": m.spec,
                            "value": round(v, 4),
                            "per_layer": [round(x, 4) for x in summ["per_layer"][m.spec][met]],
                            "params": {**params_of(m.cfg), "method": m.kind},
                            "seg_len": g["seg_len"],
                            "top_k": g["top_k"],
                            "n_cand": g["n_cand"],
                            "n_kv": g["n_kv"],
                        }
                    )
            for key, d in summ["check"].items():
                for stat, v in d.items():
                    records.append(
                        {
                            **base,
                            "metric": f"kernel_{key}_{stat}",
                            "mode": args.capture,
                            "value": v,
                            "params": params_of(capture_cfg),
                        }
                    )
            if args.plot_dir:
                args.plot_dir.mkdir(parents=True, exist_ok=True)
                for met in ("hit@1", "mass_searched", "out_err"):
                    safe = met.replace("@", "")
                    p = plot_per_layer(
                        summ,
                        met,
                        args.plot_dir / f"quality-selection-{format_size(n)}-{safe}.png",
                        f"{model.path.name}, {format_size(n)}: {met} per layer "
                        f"({args.steps} decode steps, capture {args.capture})",
                        [m.spec for m in plain],
                    )
                    if p:
                        print(f"plot: {p}")
    if args.out:
        merge_records(
            args.out, records, ("model", "corpus", "context", "metric", "mode", "capture", "offset")
        )
        print(f"records merged into {args.out}")
    return 0


def plot_per_layer(
    summary: dict, metric: str, path: Any, title: str, specs: Optional[Sequence[str]] = None
) -> Any:
    """Per-layer ``metric`` of the methods ``specs`` (default all; one line each); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for spec, mets in summary["per_layer"].items():
        if specs is not None and spec not in specs:
            continue
        ax.plot(summary["layers"], mets[metric], marker="o", ms=3, label=spec)
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
