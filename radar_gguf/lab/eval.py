"""Quality of Radar against dense attention: ``python -m radar_gguf.eval {ppl,pool,niah,select,sweep} ...``.

``ppl``  long-context perplexity on the Paul Graham essays. The first N tokens are prefilled once
         (dense, exact: Radar never touches prefill); then, for dense and for every Radar config on
         that *same* cached context, the next M tokens are scored one decode step at a time
         (teacher forcing: decode the true token, read the logits, log-softmax at the next true token).
         Prefilled contexts are cached on disk (``~/.cache/radar_gguf/eval``) across runs.
``niah`` needle in a haystack: a sentence "The secret passphrase is <word>." is put at several depths
         of essay contexts of several lengths; the question is asked with the model's chat template
         and the greedy answer must contain the word. The document is prefilled exactly; the question
         tokens are then fed one decode step at a time (``--feed decode``, default, so Radar selects
         for every question token) or in one batch (``--feed batch``: only the answer tokens use Radar).

``pool``  pools the ppl records of several disjoint windows of the corpus (``ppl --offset``, same context
         and M) into one delta ± SE over all their scored tokens.
``select`` selection quality (``radar_gguf.selection``): at sampled decode steps after a prefilled context
         the real queries and keys of every layer are captured from the decode graph, and Radar's scores,
         an oracle (exact attention mass), sinks + recent window and random selection are compared at the
         same token budget: hit@1/hit@3 of the most-attended segment, share of the top segments and
         tokens selected, attention mass covered (whole attended set and searched region alone).

Radar configs are given as specs ``NAME[:key=value,...]``: ``dense``, or a score name (``meanvar``,
``mean``, ``minmax``, ``rf``, ``oracle``) with RadarConfig fields changed from the defaults, e.g.
``rf:top_k=64,n_recent=1024`` or ``meanvar:token_budget=512``. Records (one per context, mode and
metric) are merged into a JSON list (``--out``); a markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from .config import SCORES, RadarConfig
from .sizes import argparse_size, format_size

DENSE = RadarConfig(enabled=False)
DEFAULT_PPL_CONFIGS = "dense,meanvar,mean,minmax,rf,rf:n_feat=1024,oracle,meanvar:token_budget=512,meanvar:n_recent=1024,rf:top_k=64,n_recent=1024"
DEFAULT_NIAH_CONFIGS = "dense,meanvar"
PPL_KEY = ("model", "context", "metric", "mode", "n_scored", "offset")
# the needle is part of a NIAH record's key: needles are drawn in grid order, so the same cell in another grid is
# another prompt, and its records must not replace this one's
NIAH_KEY = ("model", "context", "metric", "mode", "depth", "feed", "needle")
DEFAULT_CACHE = Path(os.environ.get("RADAR_GGUF_EVAL_CACHE", Path.home() / ".cache" / "radar_gguf" / "eval"))
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"

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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- configs ------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_config(spec: str, base: Optional[RadarConfig] = None) -> RadarConfig:
    """``dense`` or ``SCORE[:key=value,...]`` -> RadarConfig (fields changed from ``base``/defaults)."""
    spec = spec.strip()
    if spec == "dense":
        return DENSE
    name, _, rest = spec.partition(":")
    if name not in SCORES:
        raise ValueError(f"config {spec!r}: name must be 'dense' or one of {', '.join(SCORES)}")
    changes: dict[str, Any] = {"score": name, "enabled": True}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"config {spec!r}: expected key=value, got {item!r}")
        changes[key.strip()] = _parse_value(value.strip())
    try:
        return (base or RadarConfig()).replace(**changes).validate()
    except TypeError as e:
        raise ValueError(f"config {spec!r}: {e}") from None


def split_specs(text: str) -> list[str]:
    """Split a comma list of specs where a spec's own ``key=value`` items also use commas:
    ``dense,rf:top_k=64,n_recent=1024,mean`` -> ``[dense, rf:top_k=64,n_recent=1024, mean]``."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and out and out[-1] != "dense":
            out[-1] += ("," if ":" in out[-1] else ":") + part
        else:
            out.append(part)
    return out


# -- perplexity -----------------------------------------------------------------------------------------
def token_nll(logits: Any, target: int) -> float:
    """Negative log-likelihood of ``target`` under ``logits`` (float64 log-softmax)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return float(m + math.log(np.exp(x - m).sum()) - x[target])


def paired_se_pct(nll: Sequence[float], ref_nll: Sequence[float]) -> float:
    """Standard error (in % of perplexity) of the perplexity ratio of two runs scored on the same tokens:
    ``ppl / ppl_ref = exp(mean(d))`` with ``d`` the per-token NLL differences, so its SE is about
    ``100 * std(d) / sqrt(M)`` percent (pairing removes the tokens' own difficulty)."""
    import numpy as np

    d = np.asarray(nll, dtype=np.float64) - np.asarray(ref_nll, dtype=np.float64)
    return float(100.0 * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def score_continuation(model: Any, tokens: Sequence[int], n_ctx: int, n_score: int, cfg: RadarConfig) -> dict:
    """Set ``cfg``, make the context hold ``tokens[:n_ctx]`` (reusing what is cached), then score
    ``tokens[n_ctx : n_ctx+n_score]`` one decode step at a time. Returns nll list, ppl, stats."""
    from . import _lib

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


def _cache_key(model: Any, tokens: Sequence[int]) -> str:
    h = hashlib.sha256()
    p = Path(model.path)
    h.update(f"{p.name}:{p.stat().st_size if p.exists() else 0}".encode())
    import numpy as np

    h.update(np.asarray(tokens, dtype=np.int32).tobytes())
    return h.hexdigest()[:20]


def prefill_logged(model: Any, tokens: Sequence[int]) -> None:
    """Dense prefill of ``tokens`` (reusing the prefix already held) with a progress line per 10%: a 32k
    prefill takes half an hour on a 2-core machine. The last token is decoded on its own, so the logits
    are those after ``tokens``."""
    from .summarize import prefill_with_progress

    model.set_radar(DENSE)
    t0, last = time.perf_counter(), [-1]

    def report(done: int, total: int) -> None:
        if 10 * done // total > last[0]:
            last[0] = 10 * done // total
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log(f"# prefill {done}/{total} tokens ({100 * done // total}%, {rate:.0f} tok/s)")

    prefill_with_progress(model, list(tokens), report, piece=2048)
    model.prefill(tokens)


def prefill_cached(model: Any, tokens: Sequence[int], cache_dir: Optional[Path]) -> str:
    """Make the context hold ``tokens`` (dense prefill), loading/saving a llama state file under
    ``cache_dir`` (None: no disk cache). Returns how it got there: 'held', 'disk' or 'prefill'."""
    from . import _lib

    lc = _lib.bindings()
    llama = model.llama
    n = len(tokens)
    if llama.n_tokens >= n and list(llama.input_ids[:n]) == list(tokens):
        return "held"
    path = cache_dir / f"{_cache_key(model, tokens)}.state" if cache_dir else None
    if path is not None and path.exists():
        buf = (lc.llama_token * model.ctx)()
        n_out = ctypes.c_size_t(0)
        ok = lc.llama_state_load_file(llama.ctx, str(path).encode(), buf, model.ctx, ctypes.byref(n_out))
        if ok and n_out.value == n and list(buf[:n]) == list(tokens):
            llama.input_ids[:n] = tokens
            llama.n_tokens = n
            return "disk"
        log(f"# cached state {path} unusable; prefilling")
        model.reset()
    prefill_logged(model, tokens)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = (lc.llama_token * n)(*tokens)
            tmp = path.with_suffix(".tmp")
            if lc.llama_state_save_file(llama.ctx, str(tmp).encode(), arr, n):
                tmp.replace(path)
        except OSError as e:
            log(f"# could not cache the prefilled state: {e}")
    return "prefill"


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
    from .models import _write_json_atomic

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
        progress(f"  {spec:40s} ppl {r['ppl']:8.3f}{d}  {r['wall_s']:.0f} s{att}")
        yield r


# -- needle in a haystack ------------------------------------------------------------------------------------
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
    hay = text[:n_chars]
    pos = int(depth * len(hay))
    if 0 < pos < len(hay):
        cut = hay.rfind(". ", max(0, pos - 400), pos)
        pos = cut + 2 if cut >= 0 else pos
    return hay[:pos] + (" " if pos and not hay[pos - 1].isspace() else "") + needle + " " + hay[pos:]


def niah_prompt(model: Any, n_tokens: int, depth: float, word: str) -> tuple[list[int], int]:
    """Chat prompt tokens (at least ``n_tokens``, within ~1% above) and where the question starts."""
    from .corpus import essays_text

    text = essays_text()
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
    import numpy as np

    from . import _lib

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
    feed: str = "decode",
    max_tokens: int = 8,
    seed: int = 0,
    cache_dir: Optional[Path] = None,
    progress: Callable[[str], None] = log,
) -> list[dict]:
    """One record per (length, depth, spec): answer text and exact-match score. The document part of each
    prompt is prefilled densely once, and cached under ``cache_dir`` when given (a 32k cell is 20-75 min of
    prefill on a 2-core CPU; a later run of other configs on the same cell reuses it)."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        for depth in depths:
            word = rng.choice(NEEDLE_WORDS)
            toks, q0 = niah_prompt(model, n, depth, word)
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
                progress(f"  {spec:30s} {sc:.0f}  {answer.strip()!r} (needle {word!r})")
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("# matplotlib not installed: no heatmap (pip install matplotlib)")
        return None
    import numpy as np

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


# -- records ----------------------------------------------------------------------------------------------------
def merge_records(path: Path, new: Sequence[dict], key: Sequence[str]) -> list[dict]:
    """Write ``new`` into the JSON list at ``path``, replacing records with the same ``key`` fields."""
    old = json.loads(path.read_text()) if path.exists() else []
    ids = {tuple(json.dumps(r.get(k), sort_keys=True) for k in key) for r in new}
    kept = [r for r in old if tuple(json.dumps(r.get(k), sort_keys=True) for k in key) not in ids]
    allr = kept + list(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(allr, indent=1) + "\n")
    return allr


def _params(cfg: RadarConfig) -> dict:
    return asdict(cfg) if cfg.enabled else {"enabled": False}


def device_name() -> str:
    from .bench import device_name as dn

    return dn()


# -- CLI --------------------------------------------------------------------------------------------------------
def _add_cache_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="prefilled-state cache (default: %(default)s)"
    )
    sub.add_argument("--no-cache", action="store_true", help="do not read or write prefilled states on disk")


def _cache_dir(args: argparse.Namespace) -> Optional[Path]:
    return None if args.no_cache else args.cache_dir


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radar_gguf.eval",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    sub = p.add_subparsers(dest="task", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "model", nargs="?", default=None, help="GGUF path or hub spec (default: the bundled model)"
        )
        sp.add_argument("--threads", "-t", type=int, default=None)
        sp.add_argument("--gpu-layers", "-ngl", type=int, default=0)
        sp.add_argument(
            "--device", default=None, help="device description for the records (default: detected CPU)"
        )

    pp = sub.add_parser(
        "ppl", help="long-context perplexity, dense vs Radar configs on one prefilled context"
    )
    common(pp)
    pp.add_argument(
        "--contexts", default="8k", help="prefilled context lengths, comma separated (default: %(default)s)"
    )
    pp.add_argument(
        "-m",
        "--n-score",
        type=int,
        default=256,
        help="tokens scored after the context (default: %(default)s)",
    )
    pp.add_argument(
        "--offset", type=int, default=0, help="start this many tokens into the corpus (default: %(default)s)"
    )
    pp.add_argument(
        "--configs",
        default=DEFAULT_PPL_CONFIGS,
        help="dense and Radar config specs NAME[:key=value,...], comma separated (default: %(default)s)",
    )
    _add_cache_args(pp)
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

    ps = sub.add_parser("select", help="selection quality: Radar's segments vs oracle, window and random")
    common(ps)
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
        + ", ".join(_sel_methods())
        + "; fields default to --capture's) (default: "
        + _sel_default()
        + ")",
    )
    ps.add_argument(
        "--offset", type=int, default=0, help="start this many tokens into the corpus (default: %(default)s)"
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
    _add_cache_args(ps)
    ps.add_argument(
        "--out",
        type=Path,
        default=None,
        help="merge records into this JSON list (e.g. docs/results/quality-selection.json)",
    )
    ps.add_argument("--plot-dir", type=Path, default=None, help="write per-layer PNG plots here")

    pw = sub.add_parser("sweep", help="join ppl and selection records with bytes read per decode step")
    common(pw)
    pw.add_argument("--context", default="16k", help="context of the records to join (default: %(default)s)")
    pw.add_argument(
        "-m", "--n-score", type=int, default=256, help="ppl records with this M (default: %(default)s)"
    )
    pw.add_argument(
        "--ppl", type=Path, action="append", help="ppl record files (default: docs/results/quality-ppl.json)"
    )
    pw.add_argument(
        "--selection", type=Path, default=RESULTS / "quality-selection.json", help="selection records"
    )
    pw.add_argument("--out", type=Path, default=None, help="write the joined records here (JSON list)")
    pw.add_argument("--plot", type=Path, default=None, help="PNG of delta ppl vs bytes read")

    po = sub.add_parser("pool", help="pool the ppl records of several corpus windows into one delta ± SE")
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

    pn = sub.add_parser("niah", help="needle in a haystack, dense vs Radar")
    common(pn)
    pn.add_argument(
        "--lengths", default="4k,8k", help="prompt lengths, comma separated (default: %(default)s)"
    )
    pn.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths in [0,1] (default: %(default)s)")
    pn.add_argument("--configs", default=DEFAULT_NIAH_CONFIGS, help="config specs (default: %(default)s)")
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
    _add_cache_args(pn)
    return p


def _sel_methods() -> tuple:
    from .selection import METHODS

    return METHODS


def _sel_default() -> str:
    from .selection import DEFAULT_METHODS

    return DEFAULT_METHODS


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
    "attended_union",
)


def main_select(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str, device: str) -> int:
    """``eval select``: capture, evaluate, print tables, write records and plots."""
    from . import selection as sel
    from .corpus import essay_tokens
    from .engine import load

    contexts = _sizes(args.contexts, parser, "--contexts")
    try:
        capture_cfg = parse_config(args.capture)
        if not capture_cfg.enabled:
            raise ValueError("the capture config must have Radar on (a score name, not 'dense')")
        methods = [sel.parse_method(s, capture_cfg) for s in split_specs(args.methods or sel.DEFAULT_METHODS)]
    except ValueError as e:
        parser.error(str(e))
    if capture_cfg.dense_below > contexts[0]:
        parser.error(
            f"--capture dense_below={capture_cfg.dense_below} is above the context {contexts[0]}: "
            "no radar_attn node would run"
        )
    n_extra = (args.steps - 1) * args.stride + 1
    capture = sel.Capture()
    records: list[dict] = []
    with sel.eval_callback(capture.c_callback):
        model = load(
            args.model,
            ctx=contexts[-1] + n_extra + 16,
            radar=DENSE,
            threads=args.threads,
            gpu_layers=args.gpu_layers,
        )
    with model:
        all_toks = essay_tokens(model, args.offset + contexts[-1] + n_extra)[args.offset :]
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
                cache_dir=_cache_dir(args),
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
                    f"{v:.0f}" if c.startswith("attended") else sel.fmt(v)
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
                            "params": {**_params(m.cfg), "method": m.kind},
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
                            "params": _params(capture_cfg),
                        }
                    )
            if args.plot_dir:
                args.plot_dir.mkdir(parents=True, exist_ok=True)
                for met in ("hit@1", "mass_searched", "out_err"):
                    safe = met.replace("@", "")
                    p = sel.plot_per_layer(
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
        merge_records(args.out, records, ("model", "context", "metric", "mode", "capture", "offset"))
        print(f"records merged into {args.out}")
    return 0


SWEEP_HITS = ("hit@1", "hit@3", "mass", "mass_searched", "attended_union")


def sweep_records(
    ppl: Sequence[dict], selection: Sequence[dict], shape: dict, context: int, n_score: int
) -> list[dict]:
    """One record per config with a ppl record at ``context``/``n_score`` (the first record of a mode wins):
    delta ppl vs dense (the record's own ``delta_pct``, measured against the dense run of its command; else
    against the dense record of the same model and offset, flagged ``dense_same_command: false``), attention
    bytes read per decode step (``selection.kv_bytes_per_step``; the measured per-KV-head union of attended
    cells where a selection record of the same spec exists), and the selection metrics of that spec."""
    from .selection import kv_bytes_per_step

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
        total = meas["kv"] + meas["summaries"]
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
            "bytes_per_step": int(total),
            "bytes_kv": int(meas["kv"]),
            "bytes_summaries": int(meas["summaries"]),
            "bytes_bound": int(bound["kv"] + bound["summaries"]),
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
    """Delta ppl (%) against attention bytes read per decode step, one labelled point per config."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("# matplotlib not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in recs:
        if r["params"].get("enabled") is False:
            ax.axvline(r["bytes_per_step"] / 1e6, color="grey", ls="--", lw=0.8)
            ax.text(r["bytes_per_step"] / 1e6, 0, " dense", fontsize=7, color="grey")
            continue
        score = r["params"]["score"]
        ax.scatter(
            r["bytes_per_step"] / 1e6,
            r["value"],
            s=18,
            c={"meanvar": "C0", "mean": "C1", "minmax": "C2", "rf": "C3", "oracle": "C4"}.get(score, "k"),
        )
        ax.annotate(
            r["mode"],
            (r["bytes_per_step"] / 1e6, r["value"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(1, color="r", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(
        "attention bytes read per decode step, all layers (MB; K+V f16 of attended cells + summaries)"
    )
    ax.set_ylabel("perplexity vs dense (%)")
    ax.set_title(
        f"{recs[0]['model']}, {format_size(recs[0]['context'])} context, M = {recs[0]['n_scored']}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .engine import resolve_model_path
    from .gguf_check import check_gguf

    info = check_gguf(resolve_model_path(args.model, progress=False))
    shape = {
        "n_layer": info.n_layer,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "head_dim": info.head_dim,
    }
    context = _sizes(args.context, parser, "--context")[0]
    ppl = [r for f in (args.ppl or [RESULTS / "quality-ppl.json"]) for r in json.loads(f.read_text())]
    selection = json.loads(args.selection.read_text()) if args.selection and args.selection.exists() else []
    recs = sweep_records(ppl, selection, shape, context, args.n_score)
    if not recs:
        parser.error(f"no ppl records at {args.context} with M = {args.n_score}")
    recs.sort(key=lambda r: r["bytes_per_step"])
    cols = ("hit@1", "hit@3", "mass", "mass_searched")
    print(
        "| config | ppl | vs dense | MB read / step | vs dense | cells / KV head | " + " | ".join(cols) + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(cols))
    for r in recs:
        hits = " | ".join(f"{r[c]:.3f}" if c in r else "" for c in cols)
        print(
            f"| {r['mode']} | {r['ppl']:.3f} | {r['value']:+.2f}%"
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


def pool_windows(records: Sequence[dict], context: int, n_score: int) -> list[dict]:
    """Pool the perplexity deltas of disjoint corpus windows (``eval ppl --offset``) of one context.

    Per Radar mode, over the windows (offsets) that have both it and dense with the same M: the pooled
    delta is ``exp(sum_i M_i ln(1 + delta_i) / sum_i M_i) - 1``, the perplexity ratio over all scored
    tokens, and its SE ``sqrt(sum_i (M_i se_i)^2) / sum_i M_i`` (the windows are independent). Only
    records with M = ``n_score`` count; ``n_score`` 0 takes every M (per window the record with the most
    tokens). Returns one dict per mode: mode, n_windows, n_tokens, delta_pct, se_pct, windows
    [(offset, delta_pct, se_pct, M)]."""
    sel = [
        r
        for r in records
        if r.get("metric") == "ppl"
        and r.get("context") == context
        and (n_score == 0 or r.get("n_scored") == n_score)
    ]
    dense_at = {(r.get("offset", 0), r.get("n_scored")) for r in sel if r["mode"] == "dense"}
    out = []
    for mode in dict.fromkeys(r["mode"] for r in sel if r["mode"] != "dense"):
        best: dict[int, dict] = {}
        for r in sel:
            off = r.get("offset", 0)
            if r["mode"] != mode or (off, r.get("n_scored")) not in dense_at or r.get("delta_pct") is None:
                continue
            if off not in best or r["n_scored"] > best[off]["n_scored"]:
                best[off] = r
        if not best:
            continue
        wins = [
            (off, r["delta_pct"], r.get("delta_se_pct"), r["n_scored"]) for off, r in sorted(best.items())
        ]
        n_tok = sum(m for *_, m in wins)
        log_ratio = sum(m * math.log1p(d / 100.0) for _, d, _, m in wins) / n_tok
        ses = [se for _, _, se, _ in wins]
        se = (
            math.sqrt(sum((m * x) ** 2 for (*_, m), x in zip(wins, ses))) / n_tok
            if all(x is not None for x in ses)
            else None
        )
        out.append(
            {
                "mode": mode,
                "n_windows": len(wins),
                "n_tokens": n_tok,
                "delta_pct": 100.0 * math.expm1(log_ratio),
                "se_pct": se,
                "windows": wins,
            }
        )
    return out


def main_pool(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    context = _sizes(args.context, parser, "--context")[0]
    for f in args.records:
        if not f.exists():
            parser.error(f"{f}: no such file")
    rows = pool_windows([r for f in args.records for r in json.loads(f.read_text())], context, args.n_score)
    if not rows:
        m = "any M" if args.n_score == 0 else f"M = {args.n_score}"
        parser.error(f"no Radar records with a dense reference at {args.context} with {m}")
    print("| mode | windows | tokens scored | pooled vs dense ± SE | per window (offset: delta) |")
    print("|---|---|---|---|---|")
    for r in rows:
        se = "" if r["se_pct"] is None else f" ± {r['se_pct']:.2f}"
        per = ", ".join(
            f"{o}: {d:+.2f}%" + (f" (M {m})" if args.n_score == 0 else "") for o, d, _, m in r["windows"]
        )
        print(f"| {r['mode']} | {r['n_windows']} | {r['n_tokens']} | {r['delta_pct']:+.2f}%{se} | {per} |")
    return 0


def _sizes(text: str, parser: argparse.ArgumentParser, flag: str) -> list[int]:
    try:
        return sorted(argparse_size(s) for s in text.split(",") if s.strip())
    except argparse.ArgumentTypeError as e:
        parser.error(f"{flag}: {e}")
        raise


def main(argv: Optional[list] = None) -> int:
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    if args.task == "pool":
        return main_pool(args, parser)
    command = "python -m radar_gguf.eval " + " ".join(argv if argv is not None else sys.argv[1:])
    device = args.device or device_name()
    if args.task == "select":
        return main_select(args, parser, command, device)
    if args.task == "sweep":
        return main_sweep(args, parser)
    specs = split_specs(args.configs)
    try:
        for s in specs:
            parse_config(s)
    except ValueError as e:
        parser.error(f"--configs: {e}")
    from .corpus import essay_tokens
    from .engine import load

    if args.task == "ppl":
        contexts = _sizes(args.contexts, parser, "--contexts")
        if "dense" not in specs and not args.no_dense:
            specs.insert(0, "dense")
        n_ctx = contexts[-1] + args.n_score + 16
        records: list[dict] = []
        rows = []
        with load(
            args.model, ctx=n_ctx, radar=DENSE, threads=args.threads, gpu_layers=args.gpu_layers
        ) as model:
            all_toks = essay_tokens(model, args.offset + contexts[-1] + args.n_score)[args.offset :]
            log(f"# {model.path.name} on {device}: contexts {args.contexts}, {args.n_score} tokens scored")
            for n in contexts:
                toks = all_toks[: n + args.n_score]
                cache = _cache_dir(args)
                for r in eval_ppl(model, toks, n, args.n_score, specs, cache):
                    rows.append((n, r))
                    records.append(
                        {
                            "model": model.path.name,
                            "context": n,
                            "metric": "ppl",
                            "mode": r["mode"],
                            "value": round(r["ppl"], 4),
                            "delta_pct": None if r["delta_pct"] is None else round(r["delta_pct"], 3),
                            "delta_se_pct": None
                            if r["delta_se_pct"] is None
                            else round(r["delta_se_pct"], 3),
                            "n_scored": args.n_score,
                            "offset": args.offset,
                            "params": _params(r["config"]),
                            "attended": r["stats"]["n_attended"] if r["config"].enabled else n + args.n_score,
                            "seg_len": r["stats"]["seg_len"] if r["config"].enabled else None,
                            "wall_s": round(r["wall_s"], 1),
                            "device": device,
                            "command": command.strip(),
                        }
                    )
                    if args.out:  # after every config: an interrupted sweep keeps what it measured
                        merge_records(args.out, records[-1:], PPL_KEY)
        print("\n| context | mode | ppl | vs dense | attended at last step |")
        print("|---|---|---|---|---|")
        for n, r in rows:
            d = "" if r["delta_pct"] is None or r["mode"] == "dense" else f"{r['delta_pct']:+.2f}%"
            att = (
                f"{r['stats']['n_attended']} (L={r['stats']['seg_len']})"
                if r["config"].enabled and r["stats"]["n_decode_radar"]
                else "all"
            )
            print(f"| {format_size(n)} | {r['mode']} | {r['ppl']:.3f} | {d} | {att} |")
        if args.out:
            print(f"records merged into {args.out}")
        return 0

    # niah
    lengths = _sizes(args.lengths, parser, "--lengths")
    depths = [float(d) for d in args.depths.split(",") if d.strip()]
    if any(not 0 <= d <= 1 for d in depths):
        parser.error("--depths must be in [0, 1]")
    with load(
        args.model,
        ctx=int(lengths[-1] * 1.01) + 8 + args.max_tokens + 64,  # niah_prompt may run 1% + 8 tokens over
        radar=DENSE,
        threads=args.threads,
        gpu_layers=args.gpu_layers,
    ) as model:
        log(f"# {model.path.name} on {device}: NIAH {args.lengths} x {args.depths}, feed {args.feed}")
        recs = eval_niah(
            model,
            lengths,
            depths,
            specs,
            feed=args.feed,
            max_tokens=args.max_tokens,
            seed=args.seed,
            cache_dir=_cache_dir(args),
        )
        name = model.path.name
    records = []
    for r in recs:
        records.append(
            {
                "model": name,
                "context": r["length"],
                "metric": "niah_exact",
                "mode": r["mode"],
                "value": r["score"],
                "depth": r["depth"],
                "feed": args.feed,
                "needle": r["needle"],
                "answer": r["answer"],
                "prompt_tokens": r["prompt_tokens"],
                "attended": r["attended"],
                "params": _params(r["config"]),
                "device": device,
                "command": command.strip(),
            }
        )
    print("\n| mode | " + " | ".join(f"{format_size(n)}" for n in lengths) + " | mean |")
    print("|---|" + "---|" * (len(lengths) + 1))
    for spec in specs:
        cells = []
        for n in lengths:
            v = [r["score"] for r in recs if r["mode"] == spec and r["length"] == n]
            cells.append(f"{sum(v):.0f}/{len(v)}")
        allv = [r["score"] for r in recs if r["mode"] == spec]
        print(f"| {spec} | " + " | ".join(cells) + f" | {sum(allv) / len(allv):.2f} |")
    plotted = records
    if args.out:
        merged = merge_records(args.out, records, NIAH_KEY)
        print(f"records merged into {args.out}")
        # the heatmaps cover every length recorded for this model and feed, not only this run's
        plotted = [r for r in merged if r.get("model") == records[0]["model"] and r.get("feed") == args.feed]
    if args.plot_dir:
        for spec in specs:
            safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)
            p = niah_heatmap(plotted, spec, args.plot_dir / f"quality-niah-{args.feed}-{safe}.png")
            if p:
                print(f"heatmap: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
