"""A long chat session: 1000 turns on a 2k context through the REPL's turn function (run.chat_turn).

Checked: no crash; the context shifts (oldest turns dropped, the system prompt kept in the KV cache);
resident memory stays flat; and at checkpoints right after a shift the session's context is what a
fresh context holding the same tokens computes:

- Radar's incrementally maintained segment summaries equal summaries rebuilt from scratch (the next
  token's logits, bitwise-same K/V: atol 1e-4);
- the next token's logits equal those of a second model that prefilled the same tokens at once, with
  the same argmax and within twice the batch-split float noise measured in the test itself (llama.cpp's
  batched prefill gives slightly different K/V for different splits: the second model prefilling the
  same tokens in 64-token pieces); the same context short of its last token lands outside that bound
  (asserted, so the check can fail).

Figures (RSS per checkpoint, shifts, wall time) are printed with ``-s`` and recorded in docs/reliability.md.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

import radar_gguf
from radar_gguf import RadarConfig
from radar_gguf.run import chat_turn

TURNS = int(os.environ.get("RADAR_GGUF_LONG_TURNS", "1000"))
CTX = 2048
MAX_TOKENS = 2  # short greedy replies: the session is about the context, not the answers
KEEP = 0.25  # a shift keeps a quarter of the context (fewer tokens re-evaluated per shift)
SPLIT = 64  # prefill piece of the noise reference
# Radar on from 256 tokens with 32-token segments and a 256-token budget: sparse for most of the session
RADAR = RadarConfig(dense_below=256, aspect=1000.0, seg_len_min=32, token_budget=256, n_recent=32)
SYSTEM = "You are a terse assistant. Answer in at most three words."


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


def probe_logits(m, tokens, probe):
    """Logits after ``m``'s context holds ``tokens`` (the last one decoded alone, as in the session) and
    ``probe`` is decoded: two Radar decode steps."""
    m.prefill(tokens[:-1])
    m.llama.eval(tokens[-1:])
    m.llama.eval([probe])
    return m.logits()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc")
def test_thousand_turns_with_context_shift():
    from radar_gguf.models import gemma3_model_path

    path = gemma3_model_path()
    with (
        radar_gguf.load(path, ctx=CTX, radar=RADAR) as m,
        radar_gguf.load(path, ctx=CTX, radar=RADAR) as fresh,
    ):
        probe = m.tokenize("\n", add_bos=False)[0]
        history = [{"role": "system", "content": SYSTEM}]
        sink = io.StringIO()
        rss, shifts, checked, fills = {}, 0, [], []
        t0 = time.perf_counter()
        want_check = {TURNS // 2, TURNS}
        for turn in range(1, TURNS + 1):
            sink.seek(0)
            sink.truncate()
            history, last = chat_turn(
                m, history, f"Turn {turn}: a colour?", max_tokens=MAX_TOKENS, keep=KEEP, out=sink
            )
            assert last is not None, sink.getvalue()  # every turn got a reply
            assert history[0]["role"] == "system" and history[0]["content"] == SYSTEM
            shifted = "(context full: dropped" in sink.getvalue()
            shifts += shifted
            fills.append(m.n_past)
            assert m.n_past <= CTX
            if turn in (1, TURNS // 10, TURNS // 2, TURNS):
                rss[turn] = rss_mib()
            # check the first turn at or after each checkpoint that follows a shift
            if want_check and turn >= min(want_check) and shifts and m.radar_stats().n_decode_radar:
                want_check.discard(min(want_check))
                tokens = [int(t) for t in m.llama.input_ids[: m.n_past]]
                assert m.n_past > 256  # Radar decodes sparsely at this fill
                a = probe_logits(m, tokens, probe)
                st = m.radar_stats()
                assert st.n_decode_radar > 0 and st.n_attended < st.n_kv  # sparse
                m.set_radar(m.radar)  # drops every summary: rebuilt from the same cells at the next step
                b = probe_logits(m, tokens, probe)
                np.testing.assert_allclose(a, b, atol=1e-4)
                fresh.reset()
                c = probe_logits(fresh, tokens, probe)
                fresh.reset()
                for end in range(SPLIT, len(tokens) - 1, SPLIT):  # the same tokens, prefilled piece by piece
                    fresh.prefill(tokens[:end])
                noise = np.abs(probe_logits(fresh, tokens, probe) - c)
                err = np.abs(a - c)
                assert a.argmax() == c.argmax()
                assert err.mean() <= 2 * noise.mean() and err.max() <= 2 * noise.max(), (err, noise)
                # the control: a context that lost one token (its last one) lands outside that bound
                fresh.reset()
                other = np.abs(probe_logits(fresh, tokens[:-1], probe) - a)
                assert other.mean() > 2 * noise.mean() and other.max() > 2 * noise.max(), (other, noise)
                checked.append(
                    (turn, m.n_past, err.mean(), err.max(), noise.mean(), noise.max(), other.mean())
                )
        elapsed = time.perf_counter() - t0

    print(
        f"\n{TURNS} turns in {elapsed:.0f} s; {shifts} context shifts; fill {min(fills)}..{max(fills)} tokens"
    )
    print("RSS MiB at turn " + ", ".join(f"{k}: {v:.1f}" for k, v in rss.items()))
    for turn, n, mean, mx, nmean, nmax, other in checked:
        print(
            f"check at turn {turn} ({n} tokens): |dlogit| vs fresh mean {mean:.3f} max {mx:.3f}; split noise "
            f"mean {nmean:.3f} max {nmax:.3f}; control mean {other:.3f}"
        )
    assert shifts >= max(1, TURNS // 100)  # the context really shifted, many times
    assert len(checked) == 2, checked
    first, last = rss[TURNS // 10], rss[TURNS]
    assert last - first < 32, rss  # flat: no growth with the number of turns
