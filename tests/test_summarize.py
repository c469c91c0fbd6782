"""`python -m radar_gguf.summarize`: one pass, map-reduce over chunks, stdin, Ctrl-C, clear input errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

SHORT_DOC = """# The Varrow Bridge

The Varrow Bridge is a stone footbridge over the river Lenne in the town of Oskel. It was built in 1822 by
the mason Hilde Brandt and has seven arches.

In 1990 the town council closed the bridge to carts after a flood damaged two arches. A restoration funded
by local families reopened it in 1996, and today it carries about 3,000 walkers a day.
"""


def _long_text() -> str:
    """About 700 tokens of prose in paragraphs: two chunks at --ctx 512."""
    try:
        from radar_gguf.lab.corpus import essays_text

        text = essays_text()
        return text[:3000]
    except Exception:  # the corpus is optional: make up paragraphs
        paras = [
            f"Section {i}. The cooperative in district {i} grew {i * 7} tonnes of barley this year, up from "
            f"{i * 5} tonnes. Its members voted to buy {i} new tractors and to share them with district {i + 1}. "
            "The weather was dry in spring and wet in autumn, which delayed the harvest by two weeks."
            for i in range(1, 13)
        ]
        return "\n\n".join(paras)


def summarize(*args: str, **kw) -> subprocess.CompletedProcess:
    return run_cli(*args, module="radar_gguf.summarize", **kw)


def test_short_markdown_in_one_pass(tmp_path, model_path):
    doc = tmp_path / "bridge.md"
    doc.write_text(SHORT_DOC)
    note = tmp_path / "note.txt"
    note.write_text(
        "Reminder: the quarterly tax return for Pellam Ltd is due on 31 March. Ask Jonas for the receipts.\n"
    )
    out = tmp_path / "summary.md"
    r = summarize(str(doc), str(note), "-m", str(model_path), "--ctx", "2048", "-n", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "bridge.md" in r.stderr and "one pass" in r.stderr
    text = out.read_text()
    # each file summarized on its own, under a heading
    assert text.startswith("## bridge.md\n") and "\n## note.txt\n" in text
    bridge, other = text.split("## note.txt")
    assert "Varrow" in bridge or "Oskel" in bridge or "Lenne" in bridge, text
    assert "Pellam" in other or "tax" in other, text


@pytest.mark.slow  # map-reduce: several chunks, each prefilled and summarized
def test_long_text_is_map_reduced(tmp_path, model_path):
    doc = tmp_path / "long.txt"
    doc.write_text(_long_text())
    out = tmp_path / "long.md"
    flags = "--ctx 512 -n 32 --style paragraph".split()
    r = summarize(str(doc), "-m", str(model_path), *flags, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "map-reduce over" in r.stderr
    assert "chunk 1/" in r.stderr and "chunk 2/" in r.stderr
    assert "prefill" in r.stderr and "final summary" in r.stderr
    assert out.read_text().strip()


def test_stdin_to_stdout(model_path):
    r = summarize("-m", str(model_path), "--ctx", "2048", "-n", "48", "-q", input=SHORT_DOC)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert r.stderr == ""  # -q: no progress


@pytest.mark.slow  # summarizes a first chunk before the interrupt
def test_ctrl_c_saves_the_chunks_done(tmp_path, model_path):
    doc = tmp_path / "long.txt"
    doc.write_text(_long_text())
    out = tmp_path / "partial.md"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "radar_gguf.summarize", str(doc), "-m", str(model_path), "--out", str(out)]
    cmd += "--ctx 512 -n 32 --chunk-tokens 160".split()  # several small chunks: chunk 1 is done quickly
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    seen = []
    deadline = time.time() + 300  # generous: the machine may be shared
    try:
        for line in p.stderr:
            seen.append(line)
            if "chunk 1/" in line and ": done" in line:
                p.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline, "".join(seen)
        rest = p.stderr.read()
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 130, "".join(seen) + rest
    assert "interrupted" in rest
    text = out.read_text()
    assert "interrupted" in text and "### Part 1" in text


def test_several_files_get_headings():
    from radar_gguf.summarize import render

    assert render([("a.md", "x")], multiple=False) == "x\n"
    assert render([("a.md", "x"), ("b.txt", "y")], multiple=True) == "## a.md\n\nx\n\n## b.txt\n\ny\n"


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("empty.txt", b"  \n\n", "empty"),
        ("blob.md", b"abc\x00\x01\x02" * 50, "binary"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8"),
    ],
)
def test_unusable_input_names_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    r = summarize(str(path), timeout=60)
    assert r.returncode == 1, r.stderr
    assert name in r.stderr and needle in r.stderr


def test_missing_file_and_empty_stdin(tmp_path):
    r = summarize(str(tmp_path / "nope.md"), timeout=60)
    assert r.returncode == 1 and "nope.md" in r.stderr and "no such file" in r.stderr
    r = summarize("-", input="", timeout=60)
    assert r.returncode == 1 and "<stdin>" in r.stderr and "empty" in r.stderr


def test_pdf_needs_pypdf(tmp_path):
    try:
        import pypdf  # noqa: F401

        pytest.skip("pypdf is installed")
    except ImportError:
        pass
    path = tmp_path / "paper.pdf"
    path.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    r = summarize(str(path), timeout=60)
    assert r.returncode == 1 and "paper.pdf" in r.stderr and "pypdf" in r.stderr


def test_split_text_keeps_paragraphs_and_budget():
    from radar_gguf.summarize import split_text

    def count(s: str) -> int:
        return len(s.split())

    paras = [" ".join(f"w{i}_{j}" for j in range(n)) for i, n in enumerate([30, 50, 20, 90, 10, 250])]
    chunks = split_text("\n\n".join(paras), 110, count)
    assert all(count(c) <= 110 for c in chunks)
    assert chunks[0] == paras[0] + "\n\n" + paras[1] + "\n\n" + paras[2]  # packed whole paragraphs
    assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(paras).split())  # nothing lost


def test_reduce_recurses_until_the_summaries_fit(monkeypatch):
    """Level after level of grouped summaries, with a stand-in model (word counts as tokens)."""
    from radar_gguf import summarize as S

    class WordModel:  # a stand-in: one token per word
        def chat_tokens(self, messages):
            return [0] * sum(len(m["content"].split()) for m in messages), []

    s = S.Summarizer.__new__(S.Summarizer)
    s.model, s.ctx, s.margin, s.max_tokens, s.chunk_out, s.style = WordModel(), 400, 8, 40, 30, "bullets"
    s.progress, s.partial, s.last_note, s.last_finish = S.Progress(quiet=True), S.Partial("doc"), "", None
    s.count = lambda text: len(text.split())
    calls = []

    def generate(messages, max_tokens, label, on_text=None):
        calls.append(label)
        return " ".join(["w"] * max_tokens)

    s.generate = generate
    out = s._reduce("doc", [" ".join(["w"] * 30)] * 100, None)
    assert out.split() == ["w"] * 40
    assert any("level 2" in c for c in calls) and any("level 3" in c for c in calls)
    assert calls[-1] == "doc: final summary"
