"""Reliability: memory refused before allocation, threads, Ctrl-C in the REPL and in summarize.

(Corrupt model files: test_reliability_files.py; the 1000-turn session: test_reliability_session.py;
downloads: test_hub.py; prompt too long and Radar parameters out of range: test_cli.py, test_api.py,
test_serve.py and the cases here.)
"""

from __future__ import annotations

import ctypes
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, RUN_WITH_PEAK_RSS, peak_rss_kib, run_cli

import radar_gguf
from radar_gguf import RadarConfig, _lib, engine

# -- resources ------------------------------------------------------------------------------------


def _too_large_ctx() -> int:
    """A context the bundled model cannot hold here: its KV cache alone (12 KiB a token) needs about
    twice the available memory."""
    avail = engine.host_available_memory()
    ctx = 1 << 20
    while ctx * 12 * 1024 < 2 * avail:
        ctx *= 2
    return ctx


def test_ctx_that_does_not_fit_is_refused_before_allocation(model_path):
    ctx = _too_large_ctx()
    r = subprocess.run(
        [sys.executable, "-c", RUN_WITH_PEAK_RSS, str(model_path), "--ctx", str(ctx), "-p", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"a {ctx}-token context does not fit in host memory" in r.stderr
    assert "GiB is available" in r.stderr and "Nothing was allocated" in r.stderr
    assert "tokens would fit" in r.stderr  # how far to lower --ctx
    maxrss = peak_rss_kib(r.stderr)
    assert maxrss < 1.5 * 1024 * 1024, maxrss  # the estimate allocated nothing near the KV cache's size


def test_estimate_is_what_llama_cpp_allocates(model_path):
    """The no_alloc estimate equals llama.cpp's accounting of the real context: KV cache and compute
    buffers exactly, weights within 10% (the real load memory-maps the file)."""
    est = engine.estimate_memory(model_path, ctx=4096)
    with radar_gguf.load(model_path, ctx=4096, radar=RadarConfig(enabled=False)) as m:
        # 4k of a 0.5B model: where the header's bound shows it fits, llama.cpp's estimate is skipped
        assert (m.memory is None) == engine._surely_fits(m.info, 4096, 0)
        real = _lib.memory_totals(m.llama.ctx)
    assert est.ctx == 4096
    if _lib.device_memory() is None:  # CPU build: device-side buffers count as host memory
        real = (real[0] + real[3], real[1] + real[4], real[2] + real[5], 0, 0, 0)
    assert (est.host_context, est.host_compute) == real[1:3]
    # weights: the real load maps the whole file and repacks some tensors into a second buffer
    assert 0.9 * real[0] <= est.host_model <= real[0], (est.host_model, real[0])
    assert est.host_context == 4096 * 12 * 1024  # 24 layers x 2 KV heads x 64 x (K+V) x f16
    assert est.seconds < 10


def test_fit_check_uses_available_memory(model_path, monkeypatch):
    monkeypatch.setattr(engine, "host_available_memory", lambda: 600 << 20)
    with pytest.raises(engine.ContextTooLargeError, match=r"needs 0\.\d\d GiB .* but 0\.59 GiB is available"):
        radar_gguf.load(model_path, ctx=4096)
    monkeypatch.setattr(engine, "host_available_memory", lambda: 5 << 29)  # 2.5 GiB
    with radar_gguf.load(model_path, ctx=4096) as m:  # the header bound is not enough: measured, fits
        assert m.memory is not None and m.memory.problem() is None
        assert 0.5 < m.memory.host_need / (1 << 30) < 1.0
    with radar_gguf.load(model_path, ctx=512, fit_check=False) as m:  # the caller knows better
        assert m.memory is None and m.generate("Hi", max_tokens=1) is not None
    monkeypatch.setenv(engine.NO_FIT_CHECK_ENV, "1")
    with radar_gguf.load(model_path, ctx=512) as m:
        assert m.memory is None


def test_prompt_longer_than_context_is_a_clear_error(model_path):
    with radar_gguf.load(model_path, ctx=128) as m:
        with pytest.raises(ValueError, match="context holds 128; raise --ctx or shorten the prompt"):
            m.generate("word " * 300, max_tokens=1)
        assert m.generate("The capital of France is", max_tokens=2)  # still usable


def test_c_api_rejects_each_parameter_out_of_range(model_path):
    lib = _lib.bindings().llama_cpp._lib
    with radar_gguf.load(model_path, ctx=512) as m:
        before = _lib.radar_get(m.llama.ctx)
        for name, value in [
            ("score", 9),
            ("n_feat", 0),
            ("top_k", -1),
            ("token_budget", 0),
            ("n_sink", -1),
            ("n_recent", -2),
            ("aspect", 0.0),
            ("seg_len_min", 0),
            ("dense_below", -7),
        ]:
            p = _lib._to_c(RadarConfig(score="rf"))  # n_feat is checked for the random-feature score
            setattr(p, name, value)
            rc = lib.llama_radar_set_params(m.llama.ctx, ctypes.byref(p))
            assert -10 < rc < 0, (name, rc)
            assert lib.llama_radar_strerror(rc).decode().startswith(name), (name, rc)
            with pytest.raises(ValueError, match=name):  # and the Python layer names it first
                m.set_radar(RadarConfig(**{name: {"score": "nine", "aspect": 0.0}.get(name, value)}))
        assert _lib.radar_get(m.llama.ctx) == before  # nothing was applied


# -- concurrency ----------------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "Two plus two equals"]


def _greedy(m, prompt):
    m.reset()
    return [r.token for r in m.stream_generate(prompt, max_tokens=6, add_bos=False)]


def test_two_models_in_two_threads(model_path):
    with (
        radar_gguf.load(model_path, ctx=512, threads=1) as a,
        radar_gguf.load(model_path, ctx=512, threads=1) as b,
    ):
        want = [_greedy(a, PROMPTS[0]), _greedy(b, PROMPTS[1])]
        got: dict = {}
        ts = [
            threading.Thread(
                target=lambda i=i, m=m: got.__setitem__(i, [_greedy(m, PROMPTS[i]) for _ in range(3)])
            )
            for i, m in enumerate((a, b))
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert got == {0: [want[0]] * 3, 1: [want[1]] * 3}


def _again(m, prompt):
    """Greedy tokens from whatever the context holds now (no reset: the shared prefix is reused)."""
    return [r.token for r in m.stream_generate(prompt, max_tokens=6, add_bos=False)]


def test_one_model_shared_by_two_threads_is_serialized(model_path):
    """Generations from two threads on one model take turns (the second waits for the first to end)
    and each gives what the same call gives alone after the same predecessor; a second open generation
    in the same thread is refused.

    Like with like: a prompt that follows itself reuses the context (its last token is evaluated alone,
    another batch shape, other float rounding: on some CPUs other tokens), one that follows the other
    prompt (no common prefix) or an empty context is prefilled in one batch. So the reference for each
    generation is the same call after the same predecessor, made from one thread. An unserialized model
    fails: the token events interleave, and each thread's decode lands in the other's context."""
    with radar_gguf.load(model_path, ctx=512, threads=1) as m:
        assert m.tokenize(PROMPTS[0], add_bos=False)[0] != m.tokenize(PROMPTS[1], add_bos=False)[0]
        want: dict = {}  # (prompt, prompt of the previous generation or None) -> tokens
        for i, p in enumerate(PROMPTS):
            want[i, None] = _greedy(m, p)
            for prev in (0, 1):
                _greedy(m, PROMPTS[prev])
                want[i, prev] = _again(m, p)
        m.reset()
        events: list = []
        order: list = []  # the thread of each generation, in the order they held the model
        got: dict = {}

        def worker(i):
            gens = []
            for _ in range(3):
                toks = []
                for r in m.stream_generate(PROMPTS[i], max_tokens=6, add_bos=False):
                    if not toks:  # the first token comes while this generation holds the model
                        order.append(i)
                    events.append(i)
                    toks.append(r.token)
                    time.sleep(0.001)  # invite the other thread in between tokens
                gens.append(toks)
            got[i] = gens

        ts = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        assert sorted(order) == [0, 0, 0, 1, 1, 1], order
        expect: dict = {0: [], 1: []}
        for k, i in enumerate(order):
            expect[i].append(want[i, order[k - 1] if k else None])
        assert got == expect, order
        # serialized: the token events come in whole generations (no interleaving inside one)
        blocks = [events[0]]
        for e in events[1:]:
            if e != blocks[-1]:
                blocks.append(e)
        assert len(blocks) <= 6, blocks

        gen = m.stream_generate(PROMPTS[0], max_tokens=4)
        next(gen)
        with pytest.raises(RuntimeError, match="still open in this thread"):
            next(m.stream_generate(PROMPTS[1], max_tokens=4))
        with pytest.raises(RuntimeError, match="still open"):
            m.reset()
        gen.close()
        assert _greedy(m, PROMPTS[1]) == want[1, None]  # free again once closed


# -- interrupts -----------------------------------------------------------------------------------


class Repl:
    """The REPL in a subprocess, read line by line from a thread."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "radar_gguf.run", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=REPO,
        )
        self.q: queue.Queue = queue.Queue()
        self.text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            ch = self.p.stdout.read(1)
            if not ch:
                self.q.put(None)
                return
            self.q.put(ch)

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait_for(self, needle: str, timeout: float = 240) -> str:
        deadline = time.time() + timeout
        while needle not in self.text:
            try:
                ch = self.q.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                ch = None
            if ch is None or time.time() > deadline:
                raise AssertionError(f"{needle!r} not seen; output so far:\n{self.text}\n{self._stderr()}")
            self.text += ch
        return self.text

    def _stderr(self) -> str:
        if self.p.poll() is None:
            return ""
        return self.p.stderr.read()

    def close(self) -> int:
        self.p.stdin.close()
        try:
            return self.p.wait(timeout=120)
        finally:
            if self.p.poll() is None:
                self.p.kill()


def test_ctrl_c_in_the_repl_during_prefill_and_decode(model_path):
    long_prompt = "Summarize this. " + "The quick brown fox jumps over the lazy dog. " * 140  # ~1400 tokens
    r = Repl(str(model_path), "--ctx", "2048", "-n", "300")
    try:
        r.send("/ctx")
        r.wait_for("context: 0/2048 tokens")  # loaded
        # during prefill: the reply has not begun
        r.send(long_prompt)
        time.sleep(1.0)
        r.p.send_signal(signal.SIGINT)
        r.wait_for(" [stopped]")
        assert r.text.rstrip().endswith("[stopped]")  # no reply text came before it
        r.send("/ctx")
        r.wait_for("context: ", timeout=60)
        # during decode: stop a long reply once it streams
        r.send("Count from 1 to 200, separated by commas.")
        r.wait_for("5,")
        r.p.send_signal(signal.SIGINT)
        r.wait_for(" [stopped]\n")
        # still usable, and the interrupted exchange is part of the conversation
        r.send("What is the capital of France? Answer with one word.")
        r.wait_for("Paris")
        assert r.close() == 0
    finally:
        if r.p.poll() is None:
            r.p.kill()


def _interrupt_summarize(doc, model_path, out, *, ctx: int, n: int, when: str, delay: float = 0.0):
    """Run summarize and send it SIGINT once a stderr line contains ``when`` (after ``delay`` s).
    Returns (exit code, stderr up to the signal, stderr after it)."""
    cmd = [sys.executable, "-m", "radar_gguf.summarize", str(doc), "-m", str(model_path)]
    cmd += ["--ctx", str(ctx), "-n", str(n), "--out", str(out)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if when in line:
                time.sleep(delay)
                p.send_signal(signal.SIGINT)
                break
        rest = p.stderr.read()
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return rc, "".join(seen), rest


def test_ctrl_c_in_summarize_during_first_prefill(tmp_path, model_path):
    """Interrupted before any summary exists: exit 130, a clear message, no traceback, no half-written
    output file left behind."""
    doc = tmp_path / "doc.txt"
    doc.write_text(
        "\n\n".join(f"Paragraph {i}. " + "The river rose and the town watched it. " * 30 for i in range(12))
    )
    out = tmp_path / "summary.md"
    rc, seen, rest = _interrupt_summarize(doc, model_path, out, ctx=4096, n=64, when="prefill")
    assert rc == 130, seen + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert not (tmp_path / "summary.md.tmp").exists()
    if out.exists():  # whatever was saved says it is partial
        assert "interrupted" in out.read_text()


def test_ctrl_c_in_summarize_during_decode_keeps_the_text_so_far(tmp_path, model_path):
    doc = tmp_path / "bridge.md"
    doc.write_text(
        "The Varrow Bridge is a stone footbridge over the river Lenne, built in 1822 by Hilde Brandt.\n" * 6
    )
    out = tmp_path / "summary.md"
    # "100%": the prefill is done, the summary is being generated
    rc, seen, rest = _interrupt_summarize(doc, model_path, out, ctx=2048, n=400, when="100%", delay=1.5)
    assert rc == 130, seen + rest
    assert "saved the partial summary" in rest and "Traceback" not in rest
    text = out.read_text()
    assert "interrupted" in text
    assert len(text.split("\n\n", 1)[-1].strip()) > 0  # the words generated before Ctrl-C are kept


def test_repl_recovers_from_an_over_long_message(model_path):
    r = run_cli(
        str(model_path),
        "--ctx",
        "256",
        "-n",
        "8",
        input="word " * 400 + "\nWhat is the capital of France? One word.\n",
    )
    assert r.returncode == 0, r.stderr
    assert "do not fit the 256-token context" in r.stdout
    assert "Paris" in r.stdout
