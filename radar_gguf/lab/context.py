"""The context an eval runs on: which text fills it (a built-in corpus or the user's own file), and
its dense prefill, cached on disk across runs (a 16k prefill is 8-10 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .records import DENSE, log

DEFAULT_CACHE = Path(os.environ.get("RADAR_GGUF_EVAL_CACHE", Path.home() / ".cache" / "radar_gguf" / "eval"))
DEFAULT_CORPUS = "essays"


# -- text -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextSource:
    """Where the tokens of an eval come from: a built-in corpus (``corpus``, ``split``) or a text."""

    name: str  # "essays", "code", ... or "text:<file name>"
    text: Optional[str] = None  # the user's own text (--text); None: the corpus ``name``
    split: str = "all"

    def tokens(self, model: Any, n: int, offset: int = 0) -> list[int]:
        """``n`` tokens starting ``offset`` tokens into the text."""
        from .corpus import corpus_tokens

        return corpus_tokens(
            model, self.text if self.text is not None else self.name, n, offset, split=self.split
        )

    def text_of(self) -> str:
        from .corpus import corpus_text

        return self.text if self.text is not None else corpus_text(self.name, split=self.split)


def add_text_args(sp: argparse.ArgumentParser, *, many: bool = True) -> None:
    """--text FILE (or - for stdin) | --corpus NAME[,NAME...|all], and --split."""
    from .corpus import CORPORA

    g = sp.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, metavar="FILE", help="measure on this text file ('-': stdin)")
    g.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help="built-in corpus: "
        + ", ".join(CORPORA)
        + (", comma separated, or 'all'" if many else "")
        + " (default: %(default)s)",
    )
    sp.add_argument(
        "--split",
        choices=("all", "tune", "heldout"),
        default="all",
        help="part of each built-in corpus: tune (defaults are chosen on it), heldout (kept out) or all "
        "(default: %(default)s)",
    )


def text_sources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[TextSource]:
    """The sources --text/--corpus name; a missing file or an unknown corpus is a usage error."""
    from .corpus import CORPORA, CorpusNotAvailable, corpus_text, read_text

    if args.text is not None:
        try:
            text = read_text(args.text)
        except (OSError, ValueError) as e:
            parser.error(f"--text: {e}")
        name = "stdin" if args.text == "-" else Path(args.text).name
        return [TextSource(f"text:{name}", text)]
    names = (
        list(CORPORA) if args.corpus == "all" else [c.strip() for c in args.corpus.split(",") if c.strip()]
    )
    for n in names:
        if n not in CORPORA:
            parser.error(f"--corpus: unknown corpus {n!r}; choose from {', '.join(CORPORA)} or all")
        try:
            corpus_text(n, split=args.split)
        except CorpusNotAvailable as e:
            parser.error(str(e))
    return [TextSource(n, split=args.split) for n in names]


# -- prefilled contexts ---------------------------------------------------------------------------------
def _cache_key(model: Any, tokens: Sequence[int]) -> str:
    h = hashlib.sha256()
    p = Path(model.path)
    h.update(f"{p.name}:{p.stat().st_size if p.exists() else 0}".encode())
    h.update(np.asarray(tokens, dtype=np.int32).tobytes())
    return h.hexdigest()[:20]


def prefill_logged(model: Any, tokens: Sequence[int]) -> None:
    """Dense prefill of ``tokens`` (reusing the prefix already held) with a tqdm bar on stderr: a 32k
    prefill takes half an hour on a 2-core machine."""
    from ..engine import prefill_bar

    model.set_radar(DENSE)
    with prefill_bar("prefill") as bar:
        model.prefill(tokens, progress=bar, piece=2048)


def prefill_cached(model: Any, tokens: Sequence[int], cache_dir: Optional[Path]) -> str:
    """Make the context hold ``tokens`` (dense prefill), loading/saving a llama state file under
    ``cache_dir`` (None: no disk cache). Returns how it got there: 'held', 'disk' or 'prefill'."""
    from .. import _lib

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


def add_cache_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="prefilled-state cache (default: %(default)s)"
    )
    sub.add_argument("--no-cache", action="store_true", help="do not read or write prefilled states on disk")


def cache_dir(args: argparse.Namespace) -> Optional[Path]:
    return None if args.no_cache else args.cache_dir
