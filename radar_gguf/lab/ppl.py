"""Long-context perplexity, Radar against dense attention on the same tokens: ``eval ppl`` and ``eval pool``.

The first N tokens of a text are prefilled once (dense, exact: Radar never touches prefill); then, for
dense and for every Radar config on that *same* cached context, the next M tokens are scored one decode
step at a time (teacher forcing: decode the true token, read the logits, log-softmax at the next true
token). The delta of each config is paired with dense token by token, so its standard error excludes
the tokens' own difficulty. ``pool`` combines windows (offsets) and corpora into one delta ± SE.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import RadarConfig
from ..sizes import format_size
from .context import (
    TextSource,
    _cache_key,
    add_cache_args,
    add_text_args,
    cache_dir,
    prefill_cached,
    text_sources,
)
from .records import (
    DENSE,
    RESULTS,
    add_model_args,
    config_specs,
    device_name,
    log,
    merge_records,
    params_of,
    parse_config,
    radar_off_note,
    sizes,
)

DEFAULT_CONFIGS = "dense,meanvar,mean,minmax,rf,rf:n_feat=1024,oracle,meanvar:token_budget=512,meanvar:n_recent=1024,rf:top_k=64,n_recent=1024"
PPL_KEY = ("model", "corpus", "split", "context", "metric", "mode", "n_scored", "offset")


def corpus_of(record: dict) -> str:
    """The corpus of a record (records written before corpora were named are all on the essays)."""
    return record.get("corpus", "essays")


def token_nll(logits: Any, target: int) -> float:
    """Negative log-likelihood of ``target`` under ``logits`` (float64 log-softmax)."""

    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return float(m + math.log(np.exp(x - m).sum()) - x[target])


def paired_se_pct(nll: Sequence[float], ref_nll: Sequence[float]) -> float:
    """Standard error (in % of perplexity) of the perplexity ratio of two runs scored on the same tokens:
    ``ppl / ppl_ref = exp(mean(d))`` with ``d`` the per-token NLL differences, so its SE is about
    ``100 * std(d) / sqrt(M)`` percent (pairing removes the tokens' own difficulty)."""

    d = np.asarray(nll, dtype=np.float64) - np.asarray(ref_nll, dtype=np.float64)
    return float(100.0 * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def score_continuation(model: Any, tokens: Sequence[int], n_ctx: int, n_score: int, cfg: RadarConfig) -> dict:
    """Set ``cfg``, make the context hold ``tokens[:n_ctx]`` (reusing what is cached), then score
    ``tokens[n_ctx : n_ctx+n_score]`` one decode step at a time. Returns nll list, ppl, stats."""
    from .. import _lib

    if len(tokens) < n_ctx + n_score:
        raise ValueError(f"need {n_ctx + n_score} tokens, got {len(tokens)}")
    model.set_radar(cfg)
    _lib.radar_reset_stats(model.llama.ctx)
    t0 = time.perf_counter()
    model.prefill(tokens[:n_ctx])  # cached prefix: only the last context token is decoded again
    nll = []
    for i in range(n_score):
        if i:
            model.llama.eval([tokens[n_ctx + i - 1]])
        nll.append(token_nll(model.logits(), tokens[n_ctx + i]))
    dt = time.perf_counter() - t0
    st = model.radar_stats()
    return {
        "nll": nll,
        "ppl": math.exp(sum(nll) / len(nll)),
        "stats": asdict(st),
        "wall_s": dt,
    }


def dense_ref_path(
    model: Any, tokens: Sequence[int], n_ctx: int, n_score: int, cache_dir: Optional[Path]
) -> Optional[Path]:
    """Where the dense per-token NLLs of ``tokens[n_ctx : n_ctx+n_score]`` after ``tokens[:n_ctx]`` are
    cached (None without a cache dir). A sweep run with ``--no-dense`` reads them for its deltas: a dense
    decode of 1024 tokens at 16k takes ~6 minutes here, a Radar config a minute."""
    if cache_dir is None:
        return None
    return cache_dir / f"{_cache_key(model, tokens[: n_ctx + n_score])}.dense-{n_ctx}-{n_score}.json"


def _read_dense_ref(path: Path, progress: Callable[[str], None]) -> Optional[list]:
    try:
        nll = [float(x) for x in json.loads(path.read_text())["nll"]]
        if not nll:
            raise ValueError("no tokens")
        return nll
    except (OSError, ValueError, KeyError, TypeError):
        progress(f"# cached dense reference {path} unreadable; deltas left out")
        return None


def _write_dense_ref(path: Path, nll: Sequence[float], progress: Callable[[str], None]) -> None:
    from ..models import _write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, {"nll": list(nll)})
    except OSError as e:
        progress(f"# could not cache the dense reference: {e}")


def eval_ppl(
    model: Any,
    tokens: Sequence[int],
    n_ctx: int,
    n_score: int,
    specs: Sequence[str],
    cache_dir: Optional[Path] = None,
    progress: Callable[[str], None] = log,
) -> Iterator[dict]:
    """Dense and every config in ``specs`` on one prefilled context; yields one result dict per spec as
    soon as it is scored (a long sweep can record each one). Dense's per-token NLLs are cached under
    ``cache_dir``; without "dense" in ``specs`` a cached reference still gives the deltas."""
    t0 = time.perf_counter()
    how = prefill_cached(model, tokens[:n_ctx], cache_dir)
    progress(f"# context {format_size(n_ctx)}: {how} in {time.perf_counter() - t0:.0f} s")
    dense_ppl = None
    dense_nll: Optional[list] = None
    ref = dense_ref_path(model, tokens, n_ctx, n_score, cache_dir)
    if "dense" not in specs and ref is not None and ref.exists():
        dense_nll = _read_dense_ref(ref, progress)
        if dense_nll is not None:
            dense_ppl = math.exp(sum(dense_nll) / len(dense_nll))
            progress(f"# dense reference from {ref} (ppl {dense_ppl:.3f})")
    order = sorted(specs, key=lambda s: s != "dense")  # dense first: the reference for deltas
    for spec in order:
        cfg = parse_config(spec)
        r = score_continuation(model, tokens, n_ctx, n_score, cfg)
        if spec == "dense":
            dense_ppl, dense_nll = r["ppl"], r["nll"]
            if ref is not None:
                _write_dense_ref(ref, r["nll"], progress)
        r["mode"] = spec
        r["config"] = cfg
        r["delta_pct"] = None if dense_ppl is None else 100.0 * (r["ppl"] / dense_ppl - 1.0)
        r["delta_se_pct"] = None if dense_nll is None else paired_se_pct(r["nll"], dense_nll)
        st = r["stats"]
        att = (
            f", attends {st['n_attended']}/{st['n_kv']} (L={st['seg_len']})"
            if cfg.enabled and st["n_decode_radar"]
            else ""
        )
        d = "" if r["delta_pct"] is None else f" ({r['delta_pct']:+.2f}% ± {r['delta_se_pct']:.2f})"
        off = radar_off_note(model, cfg, st["n_decode_radar"])
        progress(f"  {spec:40s} ppl {r['ppl']:8.3f}{d}  {r['wall_s']:.0f} s{att}{off}")
        yield r


# -- pooling windows and corpora ----------------------------------------------------------------------------
def _pool(wins: Sequence[tuple]) -> tuple[float, Optional[float], int]:
    """Token-weighted pooling of windows ``(delta_pct, se_pct, M)``: the perplexity ratio over all their
    tokens, ``exp(sum M ln(1 + d) / sum M) - 1``, and its SE ``sqrt(sum (M se)^2) / sum M`` (the windows
    are independent). Returns (delta_pct, se_pct or None, tokens)."""
    n_tok = sum(m for *_, m in wins)
    log_ratio = sum(m * math.log1p(d / 100.0) for d, _, m in wins) / n_tok
    ses = [se for _, se, _ in wins]
    se = math.sqrt(sum((m * x) ** 2 for (*_, m), x in zip(wins, ses))) / n_tok if None not in ses else None
    return 100.0 * math.expm1(log_ratio), se, n_tok


def pool_windows(records: Sequence[dict], context: int, n_score: int) -> list[dict]:
    """Pool the perplexity deltas of disjoint windows (``eval ppl --offset``, one or more corpora) of one context.

    Per Radar mode, over the windows (corpus, offset) that have both it and dense with the same M: per
    corpus, the token-weighted pooled delta (``_pool``); over the corpora, the mean of the corpora's log
    ratios, each corpus weighing the same whatever its number of windows, with SE ``sqrt(sum se_c^2) / C``.
    Only records with M = ``n_score`` count; ``n_score`` 0 takes every M (per window the record with the
    most tokens). Returns one dict per mode: mode, n_windows, n_tokens, delta_pct, se_pct (over the
    corpora), corpora {name: {delta_pct, se_pct, n_windows, n_tokens}}, windows [(corpus, offset,
    delta_pct, se_pct, M)]."""
    sel = [
        r
        for r in records
        if r.get("metric") == "ppl"
        and r.get("context") == context
        and (n_score == 0 or r.get("n_scored") == n_score)
    ]

    # a window is (corpus, split, offset): the same offset of a corpus's tune and heldout parts is other text
    def window(r: dict) -> tuple:
        return corpus_of(r), r.get("split") or "all", r.get("offset", 0)  # records before splits: all

    dense_at = {(*window(r), r.get("n_scored")) for r in sel if r["mode"] == "dense"}
    out = []
    for mode in dict.fromkeys(r["mode"] for r in sel if r["mode"] != "dense"):
        best: dict[tuple, dict] = {}
        for r in sel:
            win = window(r)
            if r["mode"] != mode or (*win, r.get("n_scored")) not in dense_at or r.get("delta_pct") is None:
                continue
            if win not in best or r["n_scored"] > best[win]["n_scored"]:
                best[win] = r
        if not best:
            continue
        wins = [
            (
                c,
                f"{split}:{off}" if split == "heldout" else off,
                r["delta_pct"],
                r.get("delta_se_pct"),
                r["n_scored"],
            )
            for (c, split, off), r in sorted(best.items())
        ]
        corpora = {}
        for c in dict.fromkeys(w[0] for w in wins):
            cw = [w[2:] for w in wins if w[0] == c]
            d, se, n_tok = _pool(cw)
            corpora[c] = {"delta_pct": d, "se_pct": se, "n_windows": len(cw), "n_tokens": n_tok}
        logs = [math.log1p(v["delta_pct"] / 100.0) for v in corpora.values()]
        ses = [v["se_pct"] for v in corpora.values()]
        out.append(
            {
                "mode": mode,
                "n_windows": len(wins),
                "n_tokens": sum(w[4] for w in wins),
                "delta_pct": 100.0 * math.expm1(sum(logs) / len(logs)),
                "se_pct": math.sqrt(sum(x * x for x in ses)) / len(ses) if None not in ses else None,
                "corpora": corpora,
                "windows": wins,
            }
        )
    return out


def print_pool(rows: Sequence[dict], per_window: bool = True, out=None) -> None:
    """Markdown table of ``pool_windows`` rows: pooled over the corpora, then per corpus (to ``out``, default
    stdout at call time)."""
    out = out or sys.stdout
    corpora = list(dict.fromkeys(c for r in rows for c in r["corpora"]))
    head = "| mode | windows | tokens | pooled ± SE | " + " | ".join(corpora) + " |"
    print(head, file=out)
    print("|---|---|---|---|" + "---|" * len(corpora), file=out)

    def cell(d: float, se: Optional[float]) -> str:
        return f"{d:+.2f}%" + ("" if se is None else f" ± {se:.2f}")

    for r in rows:
        cells = [
            cell(r["corpora"][c]["delta_pct"], r["corpora"][c]["se_pct"]) if c in r["corpora"] else ""
            for c in corpora
        ]
        print(
            f"| {r['mode']} | {r['n_windows']} | {r['n_tokens']} | {cell(r['delta_pct'], r['se_pct'])} | "
            + " | ".join(cells)
            + " |",
            file=out,
        )
    if per_window:
        print("\nper window (corpus@offset: delta, M):", file=out)
        for r in rows:
            print(
                f"- {r['mode']}: " + ", ".join(f"{c}@{o}: {d:+.2f}% ({m})" for c, o, d, _, m in r["windows"]),
                file=out,
            )


# -- commands ---------------------------------------------------------------------------------------------
def add_ppl_args(pp: argparse.ArgumentParser) -> None:
    add_model_args(pp)
    add_text_args(pp)
    pp.add_argument(
        "--contexts", default="16k", help="prefilled context lengths, comma separated (default: %(default)s)"
    )
    pp.add_argument(
        "-m",
        "--n-score",
        type=int,
        default=256,
        help="tokens scored after the context (default: %(default)s)",
    )
    pp.add_argument(
        "--offset", type=int, default=0, help="start this many tokens into the text (default: %(default)s)"
    )
    pp.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="dense and Radar config specs NAME[:key=value,...], comma separated (default: %(default)s)",
    )
    add_cache_args(pp)
    pp.add_argument(
        "--no-dense",
        action="store_true",
        help="skip the dense reference run unless listed; deltas then come from the dense NLLs cached by an "
        "earlier run on the same tokens (none without one; `eval sweep` takes the dense record of --out)",
    )
    pp.add_argument(
        "--out",
        type=Path,
        default=None,
        help="merge records into this JSON list (e.g. docs/results/quality-ppl.json)",
    )
    pp.add_argument(
        "--f32-dense",
        action="store_true",
        help="score dense attention through llama.cpp's non-flash path (f32 softmax and accumulation) "
        "against the cached flash-attention dense reference: the reference's own float error",
    )


def _load_for(args: argparse.Namespace, contexts: list, flash_attn: bool = True) -> Any:
    """The model of an ``eval ppl`` run, dense, with room for the longest context and the scored tokens."""
    from ..engine import load

    return load(
        args.model,
        ctx=contexts[-1] + args.n_score + 16,
        radar=DENSE,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
        flash_attn=flash_attn,
    )


def main_ppl(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:

    specs = config_specs(args.configs, parser)
    if args.n_score < 1 or args.offset < 0:
        parser.error("-m must be at least 1 and --offset at least 0")
    contexts = sizes(args.contexts, parser, "--contexts")
    sources = text_sources(args, parser)
    device = args.device or device_name()
    if args.f32_dense:
        return main_f32_dense(args, contexts, sources, device, command)
    if "dense" not in specs and not args.no_dense:
        specs.insert(0, "dense")
    records: list[dict] = []
    rows = []
    with _load_for(args, contexts) as model:
        log(f"# {model.path.name} on {device}: contexts {args.contexts}, {args.n_score} tokens scored")
        for src in sources:
            all_toks = src.tokens(model, contexts[-1] + args.n_score, args.offset)
            for n in contexts:
                log(f"# {src.name} at offset {args.offset}, {format_size(n)}")
                toks = all_toks[: n + args.n_score]
                for r in eval_ppl(model, toks, n, args.n_score, specs, cache_dir(args)):
                    rows.append((src.name, n, r))
                    records.append(ppl_record(model.path.name, src, n, args, r, device, command))
                    if args.out:  # after every config: an interrupted sweep keeps what it measured
                        merge_records(args.out, records[-1:], PPL_KEY)
    print("\n| corpus | context | mode | ppl | vs dense | attended at last step |")
    print("|---|---|---|---|---|---|")
    for name, n, r in rows:
        d = (
            ""
            if r["delta_pct"] is None or r["mode"] == "dense"
            else f"{r['delta_pct']:+.2f}% ± {r['delta_se_pct']:.2f}"
        )
        att = (
            f"{r['stats']['n_attended']} (L={r['stats']['seg_len']})"
            if r["config"].enabled and r["stats"]["n_decode_radar"]
            else "all"
        )
        print(f"| {name} | {format_size(n)} | {r['mode']} | {r['ppl']:.3f} | {d} | {att} |")
    if len(sources) > 1:
        for n in contexts:
            pooled = pool_windows(records, n, args.n_score)
            if pooled:
                print(f"\n### {format_size(n)}: pooled over {len(sources)} texts (each weighs the same)\n")
                print_pool(pooled, per_window=False)
    if args.out:
        print(f"records merged into {args.out}")
    return 0


def main_f32_dense(args: argparse.Namespace, contexts: list, sources: list, device: str, command: str) -> int:
    """``eval ppl --f32-dense``: dense attention without flash attention (llama.cpp's f32 path), scored
    against the flash-attention dense NLLs an earlier run cached for the same tokens. Radar needs flash
    attention, so this mode scores dense only; its prefills are cached apart (another KV layout)."""

    records = []
    f32_cache = None if cache_dir(args) is None else cache_dir(args) / "f32-dense"
    with _load_for(args, contexts, flash_attn=False) as model:
        log(f"# {model.path.name} on {device}: dense without flash attention, {args.n_score} tokens scored")
        for src in sources:
            all_toks = src.tokens(model, contexts[-1] + args.n_score, args.offset)
            for n in contexts:
                toks = all_toks[: n + args.n_score]
                t0 = time.perf_counter()
                how = prefill_cached(model, toks[:n], f32_cache)
                log(f"# {src.name}, {format_size(n)}: {how} in {time.perf_counter() - t0:.0f} s")
                r = score_continuation(model, toks, n, args.n_score, DENSE)
                ref = dense_ref_path(model, toks, n, args.n_score, cache_dir(args))
                ref_nll = _read_dense_ref(ref, log) if ref is not None and ref.exists() else None
                r.update(mode="dense-f32", config=DENSE, delta_pct=None, delta_se_pct=None)
                if ref_nll is not None:
                    r["delta_pct"] = 100.0 * (r["ppl"] / math.exp(sum(ref_nll) / len(ref_nll)) - 1.0)
                    r["delta_se_pct"] = paired_se_pct(r["nll"], ref_nll)
                    d = f"{r['delta_pct']:+.2f}% ± {r['delta_se_pct']:.2f} against flash attention"
                else:
                    d = "no cached flash-attention reference (run `eval ppl --configs dense` first)"
                log(f"  dense-f32 ppl {r['ppl']:8.3f} ({d})  {r['wall_s']:.0f} s")
                records.append(ppl_record(model.path.name, src, n, args, r, device, command))
                if args.out:
                    merge_records(args.out, records[-1:], PPL_KEY)
    return 0


def ppl_record(
    model_name: str, src: TextSource, n: int, args: argparse.Namespace, r: dict, device: str, command: str
) -> dict:
    """The JSON record of one ``eval_ppl`` result."""
    cfg: RadarConfig = r["config"]
    return {
        "model": model_name,
        "corpus": src.name,
        "split": src.split,
        "context": n,
        "metric": "ppl",
        "mode": r["mode"],
        "value": round(r["ppl"], 4),
        "delta_pct": None if r["delta_pct"] is None else round(r["delta_pct"], 3),
        "delta_se_pct": None if r["delta_se_pct"] is None else round(r["delta_se_pct"], 3),
        "n_scored": args.n_score,
        "offset": args.offset,
        "params": params_of(cfg),
        "attended": r["stats"]["n_attended"] if cfg.enabled else n + args.n_score,
        "seg_len": r["stats"]["seg_len"] if cfg.enabled else None,
        "wall_s": round(r["wall_s"], 1),
        "device": device,
        "command": command.strip(),
    }


def add_pool_args(po: argparse.ArgumentParser) -> None:
    po.add_argument(
        "records",
        type=Path,
        nargs="*",
        default=[RESULTS / "quality-ppl.json"],
        help="ppl record files, merged (default: %(default)s)",
    )
    po.add_argument("--context", default="16k", help="context of the records to pool (default: %(default)s)")
    po.add_argument(
        "-m",
        "--n-score",
        type=int,
        default=256,
        help="ppl records with this M; 0: any M, windows weighted by their tokens (default: %(default)s)",
    )
    po.add_argument("--model", default=None, help="only records of this model file name")
    po.add_argument("--corpus", default=None, help="only these corpora, comma separated")


def main_pool(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    context = sizes(args.context, parser, "--context")[0]
    for f in args.records:
        if not f.exists():
            parser.error(f"{f}: no such file")
    recs = [r for f in args.records for r in json.loads(f.read_text())]
    if args.model:
        recs = [r for r in recs if r.get("model") == args.model]
    if args.corpus:
        keep = {c.strip() for c in args.corpus.split(",")}
        recs = [r for r in recs if corpus_of(r) in keep]
    rows = pool_windows(recs, context, args.n_score)
    if not rows:
        m = "any M" if args.n_score == 0 else f"M = {args.n_score}"
        parser.error(f"no Radar records with a dense reference at {args.context} with {m}")
    print_pool(rows)
    return 0
