"""Needle in a haystack: ``eval niah``.

A sentence "The secret passphrase is <word>." is put at several depths of contexts of several lengths
cut from a text (a built-in corpus, or ``--text``); the question is asked with the model's chat template
and the greedy answer must contain the word. The document is prefilled exactly; the question tokens are
then fed one decode step at a time (``--feed decode``, default, so Radar selects for every question
token) or in one batch (``--feed batch``: only the answer tokens use Radar).
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..sizes import format_size
from .context import add_cache_args, add_text_args, cache_dir, prefill_cached, text_sources
from .records import (
    DENSE,
    add_model_args,
    config_specs,
    device_name,
    log,
    merge_records,
    params_of,
    parse_config,
    pyplot,
    radar_off_note,
    sizes,
)

DEFAULT_CONFIGS = "dense,meanvar"
# the needle is part of a record's key: needles are drawn in grid order, so the same cell in another grid is
# another prompt, and its records must not replace this one's
NIAH_KEY = ("model", "corpus", "context", "metric", "mode", "depth", "feed", "needle")
# needle words: common, single-concept, unlikely to appear in the essays as a "passphrase"
NEEDLE_WORDS = (
    "pineapple",
    "lighthouse",
    "saxophone",
    "avalanche",
    "marmalade",
    "kangaroo",
    "tambourine",
    "volcano",
    "butterscotch",
    "origami",
    "cinnamon",
    "trombone",
    "glacier",
    "hummingbird",
    "lantern",
    "meadowlark",
    "porcupine",
    "quicksilver",
    "raspberry",
    "snowflake",
    "tangerine",
    "umbrella",
    "walrus",
    "zeppelin",
)


def normalize_answer(text: str) -> list[str]:
    """Lower-case words of ``text`` (punctuation and markdown stripped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def niah_score(answer: str, expected: str) -> float:
    """1.0 when every word of ``expected`` appears, in order and adjacent, in ``answer``; else 0.0."""
    a, e = normalize_answer(answer), normalize_answer(expected)
    if not e:
        return 0.0
    return float(any(a[i : i + len(e)] == e for i in range(len(a) - len(e) + 1)))


NEEDLE = "The secret passphrase is {word}."
QUESTION = "What is the secret passphrase mentioned in the text above? Answer with the passphrase only."


def build_haystack(text: str, n_chars: int, depth: float, needle: str) -> str:
    """``n_chars`` of ``text`` with ``needle`` inserted at a sentence boundary near ``depth`` (0..1)."""
    while len(text) < n_chars:  # a short text is repeated (and a repeated text is easier to recall)
        text = text + "\n\n" + text
    hay = text[:n_chars]
    pos = int(depth * len(hay))
    if 0 < pos < len(hay):
        cut = hay.rfind(". ", max(0, pos - 400), pos)
        pos = cut + 2 if cut >= 0 else pos
    return hay[:pos] + (" " if pos and not hay[pos - 1].isspace() else "") + needle + " " + hay[pos:]


def niah_prompt(model: Any, text: str, n_tokens: int, depth: float, word: str) -> tuple[list[int], int]:
    """Chat prompt tokens (at least ``n_tokens``, within ~1% above) with a haystack cut from ``text``, and
    where the question starts."""
    sample = text[:20000]  # chars per token on this corpus and tokenizer
    cpt = len(sample) / max(1, len(model.tokenize(sample, add_bos=False)))
    marker = "\n\n" + QUESTION
    n_chars = int(n_tokens * cpt)
    for _ in range(6):
        doc = build_haystack(text, n_chars, depth, NEEDLE.format(word=word))
        prompt, _ = model.format_chat([{"role": "user", "content": doc + marker}])
        toks = model.tokenize(prompt, add_bos=False)
        if n_tokens <= len(toks) <= n_tokens * 1.01 + 8:
            break
        n_chars = int(n_chars * (n_tokens * 1.004 + 4) / len(toks))
    tail = prompt[prompt.index(marker) :]
    n_q = len(model.tokenize(tail, add_bos=False, special=True))
    return toks, max(1, len(toks) - n_q - 1)


def greedy(model: Any, max_tokens: int) -> str:
    """Greedy continuation from the current logits (argmax), up to ``max_tokens`` or end of generation."""
    from .. import _lib

    lc = _lib.bindings()
    vocab = model.llama._model.vocab
    out: list[int] = []
    for i in range(max_tokens):
        t = int(np.argmax(model.logits()))
        if lc.llama_vocab_is_eog(vocab, t):
            break
        out.append(t)
        if "\n" in model.detokenize(out).strip() or i == max_tokens - 1:
            break
        model.llama.eval([t])
    return model.detokenize(out)


def eval_niah(
    model: Any,
    lengths: Sequence[int],
    depths: Sequence[float],
    specs: Sequence[str],
    *,
    text: Optional[str] = None,
    feed: str = "decode",
    max_tokens: int = 8,
    seed: int = 0,
    cache_dir: Optional[Path] = None,
    progress: Callable[[str], None] = log,
) -> list[dict]:
    """One record per (length, depth, spec): answer text and exact-match score. The document part of each
    prompt is prefilled densely once, and cached under ``cache_dir`` when given (a 32k cell is 20-75 min of
    prefill on a 2-core CPU; a later run of other configs on the same cell reuses it). The haystack is cut
    from ``text`` (default: the essays)."""
    if text is None:
        from .corpus import essays_text

        text = essays_text()
    rng = random.Random(seed)
    out = []
    for n in lengths:
        for depth in depths:
            word = rng.choice(NEEDLE_WORDS)
            toks, q0 = niah_prompt(model, text, n, depth, word)
            if len(toks) + max_tokens + 2 > model.ctx:
                raise ValueError(f"prompt of {len(toks)} tokens does not fit --ctx {model.ctx}")
            t0 = time.perf_counter()
            how = prefill_cached(model, toks[:q0], cache_dir)
            progress(
                f"# {format_size(n)} depth {depth:.0%}: {len(toks)} prompt tokens, doc filled in "
                f"{time.perf_counter() - t0:.0f} s ({how})"
            )
            for spec in specs:
                cfg = parse_config(spec)
                model.set_radar(cfg)
                if feed == "decode":
                    model.prefill(toks[:q0])
                    for t in toks[q0:]:
                        model.llama.eval([t])
                else:
                    model.prefill(toks)
                answer = greedy(model, max_tokens)
                sc = niah_score(answer, word)
                st = model.radar_stats()
                off = radar_off_note(model, cfg, st.n_decode_radar)
                progress(f"  {spec:30s} {sc:.0f}  {answer.strip()!r} (needle {word!r}){off}")
                out.append(
                    {
                        "length": n,
                        "prompt_tokens": len(toks),
                        "depth": depth,
                        "mode": spec,
                        "config": cfg,
                        "answer": answer,
                        "needle": word,
                        "score": sc,
                        "attended": st.n_attended if cfg.enabled and st.n_decode_radar else None,
                    }
                )
    return out


def niah_heatmap(records: Sequence[dict], mode: str, path: Path) -> Optional[Path]:
    """Depth x length heatmap of the scores of ``mode`` from NIAH records (context, depth, value, as
    written to ``--out``); None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None

    rs = [(r["context"], r["depth"], r["value"]) for r in records if r["mode"] == mode]
    lengths = sorted({n for n, _, _ in rs})
    depths = sorted({d for _, d, _ in rs})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for n, d, v in rs:
        grid[depths.index(d), lengths.index(n)] = v
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(lengths), 1.0 + 0.6 * len(depths)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [format_size(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context tokens")
    ax.set_ylabel("needle depth")
    ax.set_title(f"NIAH: {mode}", fontsize=9)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- command ----------------------------------------------------------------------------------------------
def add_niah_args(pn: argparse.ArgumentParser) -> None:
    add_model_args(pn)
    add_text_args(pn)
    pn.add_argument("--lengths", default="16k", help="prompt lengths, comma separated (default: %(default)s)")
    pn.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths in [0,1] (default: %(default)s)")
    pn.add_argument("--configs", default=DEFAULT_CONFIGS, help="config specs (default: %(default)s)")
    pn.add_argument(
        "--feed",
        choices=("decode", "batch"),
        default="decode",
        help="question tokens one decode step each (Radar active) or in one exact batch",
    )
    pn.add_argument(
        "--max-tokens", type=int, default=8, help="answer tokens generated (default: %(default)s)"
    )
    pn.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the needle words, drawn in grid order (default: %(default)s)",
    )
    pn.add_argument("--out", type=Path, default=None, help="merge records into this JSON list")
    pn.add_argument("--plot-dir", type=Path, default=None, help="write quality-niah-<mode>.png heatmaps here")
    add_cache_args(pn)


def main_niah(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    from ..engine import load

    specs = config_specs(args.configs, parser)
    lengths = sizes(args.lengths, parser, "--lengths")
    try:
        depths = [float(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--depths: expected numbers in [0, 1], got {args.depths!r}")
    if not depths or any(not 0 <= d <= 1 for d in depths):
        parser.error("--depths must be in [0, 1]")
    sources = text_sources(args, parser)
    device = args.device or device_name()
    records = []
    with load(
        args.model,
        ctx=int(lengths[-1] * 1.01) + 8 + args.max_tokens + 64,  # niah_prompt may run 1% + 8 tokens over
        radar=DENSE,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
    ) as model:
        for src in sources:
            log(
                f"# {model.path.name} on {device}: NIAH in {src.name}, {args.lengths} x {args.depths}, feed {args.feed}"
            )
            recs = eval_niah(
                model,
                lengths,
                depths,
                specs,
                text=src.text_of(),
                feed=args.feed,
                max_tokens=args.max_tokens,
                seed=args.seed,
                cache_dir=cache_dir(args),
            )
            records += [niah_record(model.path.name, src.name, r, args.feed, device, command) for r in recs]
    print("\n| corpus | mode | " + " | ".join(f"{format_size(n)}" for n in lengths) + " | mean |")
    print("|---|---|" + "---|" * (len(lengths) + 1))
    for src in sources:
        for spec in specs:
            mine = [r for r in records if r["mode"] == spec and r["corpus"] == src.name]
            cells = []
            for n in lengths:
                v = [r["value"] for r in mine if r["context"] == n]
                cells.append(f"{sum(v):.0f}/{len(v)}")
            print(
                f"| {src.name} | {spec} | "
                + " | ".join(cells)
                + f" | {sum(r['value'] for r in mine) / len(mine):.2f} |"
            )
    plotted = records
    if args.out:
        merged = merge_records(args.out, records, NIAH_KEY)
        print(f"records merged into {args.out}")
        # the heatmaps cover every length recorded for this model and feed, not only this run's
        plotted = [r for r in merged if r.get("model") == records[0]["model"] and r.get("feed") == args.feed]
    if args.plot_dir:
        for src in sources:
            for spec in specs:
                safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)
                corpus = "" if src.name == "essays" else "-" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", src.name)
                mine = [r for r in plotted if r.get("corpus", "essays") == src.name]
                p = niah_heatmap(mine, spec, args.plot_dir / f"quality-niah{corpus}-{args.feed}-{safe}.png")
                if p:
                    print(f"heatmap: {p}")
    return 0


def niah_record(model_name: str, corpus: str, r: dict, feed: str, device: str, command: str) -> dict:
    """The JSON record of one ``eval_niah`` result."""
    return {
        "model": model_name,
        "corpus": corpus,
        "context": r["length"],
        "metric": "niah_exact",
        "mode": r["mode"],
        "value": r["score"],
        "depth": r["depth"],
        "feed": feed,
        "needle": r["needle"],
        "answer": r["answer"],
        "prompt_tokens": r["prompt_tokens"],
        "attended": r["attended"],
        "params": params_of(r["config"]),
        "device": device,
        "command": command.strip(),
    }
