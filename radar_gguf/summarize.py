"""Summarize documents with a GGUF model: ``python -m radar_gguf.summarize FILE... [--ctx 64k] [--out FILE]``.

A document that fits the context (prompt plus the reserved output) is summarized in one pass with the
model's chat template. A longer one is map-reduced: split on paragraph boundaries into chunks that
fit, each chunk summarized, then the summaries summarized (in groups, level after level, until they
fit one prompt). Progress goes to stderr, the summary to stdout or ``--out``. ``-`` (or no FILE)
reads stdin. Text files are read as UTF-8; PDFs need ``pypdf``. Ctrl-C stops (exit status 130); with
``--out`` the part done so far (finished summaries, chunk summaries) is saved with a note.

Why about 600 lines: reading (text, PDF, stdin), splitting, the map-reduce and the partial save on
Ctrl-C are one pipeline, each step a few small functions.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

from tqdm import tqdm

from .args import (
    add_model_args,
    add_radar_args,
    add_sampling_args,
    int_range,
    load_from_args,
    parse_args_and_radar,
    positive_int,
)
from .engine import PREFILL_PIECE
from .sizes import format_size

DEFAULT_CTX = "8k"
SYSTEM = "You write faithful, concise summaries. Use only facts stated in the text; never invent details."
STYLES = {
    "bullets": "Write the summary as a short Markdown bulleted list ('- ' per line) of the key points.",
    "paragraph": "Write the summary as one or two concise paragraphs of plain prose.",
}
MAP_INSTRUCTION = (
    "Summarize this part ({part}) of the document {name} in a few concise bullet points. Keep names, numbers, "
    "decisions and conclusions."
)
REDUCE_INSTRUCTION = (
    "Below are summaries of consecutive parts of the document {name}, in order. Merge them into one summary of "
    "the whole document."
)


class InputError(Exception):
    """A document that cannot be summarized; the message starts with its name."""


@dataclass
class Document:
    name: str
    text: str


# -- reading ----------------------------------------------------------------------------------------


def read_document(spec: str, stdin: Optional[TextIO] = None) -> Document:
    """Read ``spec`` (a path, or ``-`` for stdin) as text; InputError names the file for anything unusable."""
    if spec == "-":
        stream = stdin if stdin is not None else sys.stdin
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8")
        return Document("<stdin>", decode_text("<stdin>", data))
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{spec}: no such file")
    if path.is_dir():
        raise InputError(f"{spec}: is a directory")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{spec}: cannot read: {e.strerror or e}") from None
    if path.suffix.lower() == ".pdf" or data.startswith(b"%PDF-"):
        return Document(path.name, read_pdf(spec, path))
    return Document(path.name, decode_text(spec, data))


def decode_text(name: str, data: bytes) -> str:
    if b"\x00" in data:
        raise InputError(
            f"{name}: binary file (it contains NUL bytes); summarize reads UTF-8 text (.txt, .md) or PDF"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{name}: not UTF-8 text (undecodable byte at offset {e.start}); summarize reads UTF-8 text or PDF"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(f"{name}: empty, nothing to summarize")
    return text


def read_pdf(name: str, path: Path) -> str:
    try:
        import pypdf
    except ImportError:
        raise InputError(f"{name}: reading PDF needs the pypdf package (pip install pypdf)") from None
    try:
        reader = pypdf.PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # pypdf raises many types for damaged files
        raise InputError(f"{name}: cannot read this PDF: {e}") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise InputError(f"{name}: the PDF has no extractable text (scanned pages?)")
    return text


# -- splitting ----------------------------------------------------------------------------------------

_SPLITTERS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
)


def split_text(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Split ``text`` into chunks of at most ``budget`` tokens (by ``count``), on paragraph boundaries if
    possible, else lines, sentences, words, and as a last resort tokens. Pieces are packed greedily."""
    pieces = _pieces(text.strip(), budget, count, 0)
    chunks: list[str] = []
    cur: list[str] = []
    cur_n = 0
    for piece, n, sep in pieces:
        add = n + (1 if cur else 0)  # a separator costs about one token
        if cur and cur_n + add > budget:
            chunks.append("".join(cur).strip())
            cur, cur_n, add = [], 0, n
        cur.append((sep if cur else "") + piece)
        cur_n += add
    if cur:
        chunks.append("".join(cur).strip())
    return [c for c in chunks if c]


def _pieces(text: str, budget: int, count: Callable[[str], int], level: int) -> list[tuple[str, int, str]]:
    """(piece, tokens, separator before it) with every piece within ``budget``."""
    if level >= len(_SPLITTERS):
        return _token_slices(text, budget, count)
    splitter = _SPLITTERS[level]
    sep = ["\n\n", "\n", " ", " "][level]
    out: list[tuple[str, int, str]] = []
    for part in splitter.split(text):
        part = part.strip() if level == 0 else part
        if not part.strip():
            continue
        n = count(part)
        if n <= budget:
            out.append((part, n, sep))
        else:
            sub = _pieces(part, budget, count, level + 1)
            if sub:
                sub[0] = (sub[0][0], sub[0][1], sep)
            out.extend(sub)
    return out


def _token_slices(text: str, budget: int, count: Callable[[str], int]) -> list[tuple[str, int, str]]:
    # a single "word" longer than a chunk (e.g. base64): cut by characters, checking the token count
    out = []
    step = max(1, budget * 2)
    i = 0
    while i < len(text):
        j = min(len(text), i + step)
        while j > i + 1 and count(text[i:j]) > budget:
            j = i + max(1, (j - i) * 3 // 4)
        out.append((text[i:j], count(text[i:j]), ""))
        i = j
    return out


# -- progress ----------------------------------------------------------------------------------------


class Progress:
    """Status lines and a tqdm prefill bar per document piece, on stderr (nothing with ``quiet``)."""

    def __init__(self, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self._bar: Optional[tqdm] = None
        self._label = ""

    def line(self, msg: str) -> None:
        if self.quiet:
            return
        self._end()
        self.stream.write(f"summarize: {msg}\n")
        self.stream.flush()

    def prefill(self, label: str, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        if self._bar is None or label != self._label:
            self._end()
            self._label = label
            self._bar = tqdm(
                total=total, desc=f"summarize: {label}: prefill", unit="tok", file=self.stream, leave=False
            )
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._end()

    def _end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def prefill_with_progress(
    model, tokens: list, report: Callable[[int, int], None], piece: int = PREFILL_PIECE
) -> int:
    """Evaluate all but the last of ``tokens`` in ``piece``-token steps, calling ``report(done, total)``.

    Same semantics as ``model.prefill`` (the longest common prefix already in the context is kept);
    ``model.stream_generate(tokens)`` then evaluates only the last token. Returns the tokens evaluated.
    """
    total = len(tokens)
    n = model.prefill(tokens[:-1], progress=lambda done, _: report(done, total), piece=piece)
    report(total, total)  # the last token is evaluated by stream_generate, right after
    return n + 1


# -- summarizing ----------------------------------------------------------------------------------------


@dataclass
class Partial:
    """What is done for the document being summarized (saved on Ctrl-C)."""

    name: str
    n_chunks: int = 0
    summaries: list = field(default_factory=list)  # chunk summaries of the current level
    level: int = 1
    final: str = ""  # text of the final summary generated so far


class Summarizer:
    def __init__(
        self,
        model,
        *,
        style: str = "bullets",
        max_tokens: int = 512,
        temperature: float = 0.0,
        progress: Optional[Progress] = None,
        chunk_tokens: Optional[int] = None,
    ) -> None:
        self.model = model
        self.style = style
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.progress = progress or Progress(quiet=True)
        self.ctx = model.ctx
        self.margin = 8 + self.ctx // 100
        # output reserved for a chunk summary: enough for a few points, small next to the chunk
        self.chunk_out = max(32, min(max_tokens, self.ctx // 8))
        self.partial: Optional[Partial] = None
        self.last_note = ""
        self.last_finish: Optional[str] = None
        overhead = max(
            self._overhead(self._map_messages("x", "part 1 of 2", "")),
            self._overhead(self._reduce_messages("x", [""], final=True)),
        )
        room = self.ctx - overhead - self.margin
        if max_tokens + 64 > room or self.chunk_out * 3 > room - self.chunk_out:
            raise ValueError(
                f"-n {max_tokens} leaves too little room for text in a {self.ctx}-token context; "
                "lower -n or raise --ctx"
            )
        self.chunk_tokens = chunk_tokens

    def chunk_budget(self, name: str) -> int:
        """Tokens of text per map-step chunk of the document ``name``."""
        overhead = self._overhead(self._map_messages(name, "part 9999 of 9999", ""))
        room = self.ctx - overhead - self.margin - self.chunk_out
        if room < 64:
            raise ValueError(
                f"{name}: no room for text in a {self.ctx}-token context; raise --ctx or lower -n"
            )
        return min(self.chunk_tokens, room) if self.chunk_tokens else room

    # prompts
    def _map_messages(self, name: str, part: str, text: str) -> list:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": MAP_INSTRUCTION.format(part=part, name=name) + "\n\n" + text},
        ]

    def _reduce_messages(self, name: str, summaries: list, final: bool) -> list:
        style = STYLES[self.style] if final else "Write the merged summary as concise bullet points."
        body = "\n\n".join(f"Part {i + 1}:\n{s}" for i, s in enumerate(summaries))
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": REDUCE_INSTRUCTION.format(name=name) + " " + style + "\n\n" + body},
        ]

    def _single_messages(self, doc: Document) -> list:
        return [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"Summarize the document {doc.name}. {STYLES[self.style]}\n\n"
                f"<document>\n{doc.text}\n</document>",
            },
        ]

    def _overhead(self, messages: list) -> int:
        return len(self.model.chat_tokens(messages)[0])

    def count(self, text: str) -> int:
        return len(self.model.tokenize(text, add_bos=False, special=False))

    def generate(
        self, messages: list, max_tokens: int, label: str, on_text: Optional[Callable[[str], None]] = None
    ) -> str:
        tokens, stops = self.model.chat_tokens(messages)
        if len(tokens) + max_tokens > self.ctx:
            raise ValueError(
                f"{label}: {len(tokens)} prompt tokens + {max_tokens} output do not fit {self.ctx}"
            )
        t0 = time.perf_counter()
        prefill_with_progress(self.model, tokens, lambda d, t: self.progress.prefill(label, d, t))
        t_prefill = time.perf_counter() - t0
        parts: list[str] = []
        n_gen, tps = 0, 0.0
        self.last_finish = None
        for r in self.model.stream_generate(
            tokens, max_tokens=max_tokens, temperature=self.temperature, stop=stops
        ):
            parts.append(r.text)
            n_gen, tps = r.generation_tokens, r.generation_tps
            self.last_finish = r.finish_reason
            if on_text is not None and r.text:
                on_text(r.text)
        self.last_note = (
            f"{len(tokens)} prompt tokens in {t_prefill:.1f} s, {n_gen} tokens generated at {tps:.1f} tok/s"
        )
        return "".join(parts).strip()

    def _done(self, label: str) -> None:
        # logged only once the result is stored, so that Ctrl-C after this line keeps it
        self.progress.line(f"{label}: done, {self.last_note}")

    def fits(self, doc: Document) -> tuple[bool, int]:
        n = len(self.model.chat_tokens(self._single_messages(doc))[0])
        return n + self.max_tokens <= self.ctx, n

    def summarize(self, doc: Document, on_text: Optional[Callable[[str], None]] = None) -> str:
        """The summary of ``doc``; ``on_text`` receives the final summary's text as it is generated."""
        self.partial = Partial(doc.name)
        n_text = self.count(doc.text)
        if n_text < self.ctx:
            ok, n = self.fits(doc)
            if ok:
                self.progress.line(
                    f"{doc.name}: {n} tokens with the prompt, fits the {format_size(self.ctx)} "
                    "context: one pass"
                )
                text = self.generate(
                    self._single_messages(doc), self.max_tokens, doc.name, self._tee(on_text)
                )
                return self._final(text, doc.name)
        budget = self.chunk_budget(doc.name)
        chunks = split_text(doc.text, budget, self.count)
        self.partial.n_chunks = len(chunks)
        self.progress.line(
            f"{doc.name}: {n_text} tokens, more than the {format_size(self.ctx)} context "
            f"holds with {self.max_tokens} output tokens: map-reduce over {len(chunks)} chunks "
            f"of at most {budget} tokens"
        )
        summaries = self.partial.summaries
        for i, chunk in enumerate(chunks):
            label = f"{doc.name}: chunk {i + 1}/{len(chunks)}"
            s = self.generate(
                self._map_messages(doc.name, f"part {i + 1} of {len(chunks)}", chunk), self.chunk_out, label
            )
            summaries.append(s or "(nothing to note)")
            self._done(label)
        return self._reduce(doc.name, summaries, on_text)

    def _reduce(self, name: str, summaries: list, on_text: Optional[Callable[[str], None]]) -> str:
        level = 1
        while True:
            msgs = self._reduce_messages(name, summaries, final=True)
            n = len(self.model.chat_tokens(msgs)[0])
            if n + self.max_tokens <= self.ctx or len(summaries) == 1:
                self.progress.line(f"{name}: combining {len(summaries)} summaries into the final summary")
                text = self.generate(msgs, self.max_tokens, f"{name}: final summary", self._tee(on_text))
                return self._final(text, f"{name}: final summary")
            groups = self._pack(name, summaries)
            if len(groups) >= len(summaries):
                raise ValueError(
                    f"{name}: the chunk summaries do not shrink in a {self.ctx}-token context; "
                    "raise --ctx or lower -n"
                )
            level += 1
            self.progress.line(
                f"{name}: level {level}: {len(summaries)} summaries are too long for one prompt; "
                f"combining them in {len(groups)} groups"
            )
            merged: list[str] = []
            self.partial.summaries, self.partial.level = merged, level
            for j, group in enumerate(groups):
                label = f"{name}: level {level} group {j + 1}/{len(groups)}"
                merged.append(
                    self.generate(self._reduce_messages(name, group, final=False), self.chunk_out, label)
                    or "(nothing to note)"
                )
                self._done(label)
            summaries = merged

    def _pack(self, name: str, summaries: list) -> list[list[str]]:
        base = len(self.model.chat_tokens(self._reduce_messages(name, [""], final=False))[0])
        budget = self.ctx - self.chunk_out - self.margin - base
        groups: list[list[str]] = []
        cur: list[str] = []
        used = 0
        for s in summaries:
            n = self.count(s) + 8  # "Part i:" and the blank line
            if cur and used + n > budget:
                groups.append(cur)
                cur, used = [], 0
            cur.append(s)
            used += n
        if cur:
            groups.append(cur)
        return groups

    def _tee(self, on_text: Optional[Callable[[str], None]]) -> Callable[[str], None]:
        def f(text: str) -> None:
            if self.partial is not None:
                self.partial.final += text
            if on_text is not None:
                on_text(text)

        return f

    def _final(self, text: str, label: str) -> str:
        self.partial = None
        self._done(label)
        if self.last_finish == "length":
            self.progress.line(f"{label}: the summary reached -n {self.max_tokens} tokens and may be cut off")
        return text


def partial_text(p: Partial) -> str:
    """What to save of an interrupted document."""
    if p.final.strip():
        note = "_(interrupted while writing the summary; it is incomplete)_"
        return f"{note}\n\n{p.final.strip()}"
    if not p.summaries:
        return "_(interrupted before any part was summarized)_"
    what = (
        f"{len(p.summaries)} of {p.n_chunks} chunk summaries"
        if p.level == 1
        else f"{len(p.summaries)} level-{p.level} summaries"
    )
    body = "\n\n".join(f"### Part {i + 1}\n\n{s}" for i, s in enumerate(p.summaries))
    return f"_(interrupted: partial summary; {what} were done, the final summary was not written)_\n\n{body}"


def render(results: list, multiple: bool) -> str:
    if not multiple and len(results) == 1:
        return results[0][1].strip() + "\n"
    return "\n\n".join(f"## {name}\n\n{text.strip()}" for name, text in results) + "\n"


# -- command line -------------------------------------------------------------------------------------


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radar-gguf summarize", description=__doc__.splitlines()[0])
    p.add_argument(
        "files", nargs="*", metavar="FILE", help="text (.txt, .md) or PDF files; '-' or none: stdin"
    )
    add_model_args(p, ctx_default=DEFAULT_CTX, positional=False)
    p.add_argument("-o", "--out", default=None, help="write the summary to this file (default: stdout)")
    p.add_argument(
        "--style", choices=sorted(STYLES), default="bullets", help="summary style (default: %(default)s)"
    )
    p.add_argument(
        "-n",
        "--max-tokens",
        type=positive_int,
        default=512,
        help="tokens for the summary of each document (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-tokens",
        type=int_range(16, what="a number of tokens (at least 16)"),
        default=None,
        help="map-reduce chunk size in tokens, at least 16 (default: what fits the context)",
    )
    add_sampling_args(p, top_p=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_radar_args(p)
    return p


def _out_problem(path: str) -> Optional[str]:
    """Why ``--out path`` cannot be written (None if it can): empty, a directory, no such folder."""
    if not path.strip():
        return "empty file name"
    out = Path(path).expanduser()
    if out.is_dir():
        return "is a directory; give a file name"
    if not out.name or out.name in (".", ".."):
        return "not a file name"
    parent = out.resolve().parent
    if not parent.is_dir():
        return "its folder does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its folder {parent} is not writable"
    return None


def _write_out(path: str, text: str) -> None:
    out = Path(path).expanduser()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


def main(argv: Optional[list] = None) -> int:
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = setup_arg_parser()
    args, radar = parse_args_and_radar(parser, argv)
    specs = args.files or ["-"]
    if specs.count("-") > 1:
        parser.error("stdin ('-') can be read only once")
    if args.out is not None:
        problem = _out_problem(args.out)
        if problem:  # found before any work, not when the summary is done
            print(f"error: {args.out or '--out'}: {problem}", file=sys.stderr)
            return 1
    progress = Progress(quiet=args.quiet)

    results: list[tuple[str, str]] = []
    summarizer: Optional[Summarizer] = None
    try:
        if "-" in specs and sys.stdin.isatty():
            print("summarize: reading the text from stdin; end it with Ctrl-D", file=sys.stderr)
        try:
            docs = [read_document(s) for s in specs]
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        model = load_from_args(args, radar)
        if model is None:
            return 1
        with model:
            try:
                summarizer = Summarizer(
                    model,
                    style=args.style,
                    max_tokens=args.max_tokens,
                    temperature=args.temp,
                    progress=progress,
                    chunk_tokens=args.chunk_tokens,
                )
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            multiple = len(docs) > 1
            for doc in docs:
                streaming = args.out is None
                if streaming and multiple:
                    sys.stdout.write(f"{'' if not results else chr(10)}## {doc.name}\n\n")
                    sys.stdout.flush()

                def echo(text: str) -> None:
                    sys.stdout.write(text)
                    sys.stdout.flush()

                try:
                    summary = summarizer.summarize(doc, on_text=echo if streaming else None)
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 1
                results.append((doc.name, summary))
                if streaming:
                    sys.stdout.write("\n")
                    sys.stdout.flush()
            if args.out is not None:
                try:
                    _write_out(args.out, render(results, multiple))
                except OSError as e:
                    print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
                    return 1
                progress.line(f"wrote {args.out}")
        return 0
    except KeyboardInterrupt:
        progress._end()
        print("\nsummarize: interrupted", file=sys.stderr)
        if args.out is not None:
            done = list(results)
            if summarizer is not None and summarizer.partial is not None:
                done.append((summarizer.partial.name, partial_text(summarizer.partial)))
            if done:
                try:
                    _write_out(args.out, render(done, len(specs) > 1))
                    print(f"summarize: saved the partial summary to {args.out}", file=sys.stderr)
                except OSError as e:
                    print(f"summarize: could not save the partial summary: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
