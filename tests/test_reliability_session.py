"""A long chat session: 1000 turns on a 2k context through the REPL's turn function (run.chat_turn).

Checked: every turn answers; the context shifts (oldest turns dropped, the system prompt kept in the
KV cache); resident memory grows less than 128 MiB over the second half; and at two shifts (the first after turn 500 and after turn 750):

- the session's context equals a fresh context holding the same tokens: a second model that made the
  same prefills (turn 1's prompt, then each shift's) gives the same next-token logits (max |dlogit|
  <= TOL), and one that prefilled them at once the same argmax (other batch splits: float noise),
  while a context short of one token in its middle is far outside (asserted, so the check can
  fail). Right after a shift every cell holds prefill K/V: the system prompt's from turn 1, the rest
  evaluated again; later, tokens decoded with Radar carry its approximation in their K/V;
- Radar's incrementally maintained segment summaries equal summaries rebuilt from scratch: a sparse
  decode step gives the same logits (atol 1e-4: bitwise-same K/V) before and after dropping them all.

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
TOL = 1e-3  # max |dlogit| against a fresh context that made the same prefills
# Radar on from 256 tokens with 32-token segments and a 256-token budget: sparse for most of the session
RADAR = RadarConfig(dense_below=256, aspect=1000.0, seg_len_min=32, token_budget=256, n_recent=32)
SYSTEM = "You are a terse assistant. Answer in at most three words."


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


def check(m, fresh, tokens, prompts, probe, turn):
    """At a shift: the session's context against a fresh context that evaluated the same tokens (the same
    prefills: turn 1's prompt, then the prompt of every shift), then the session's Radar summaries
    against summaries rebuilt from scratch, at a sparse decode step."""
    m.prefill(tokens)
    a = m.logits()
    fresh.reset()
    for prompt in prompts + [tokens]:
        fresh.prefill(prompt)
    c = fresh.logits()
    err = float(np.abs(a - c).max())
    assert err <= TOL, err
    fresh.reset()
    fresh.prefill(tokens)  # the same tokens in one prefill: other batch splits, float noise only
    once = fresh.logits()
    assert once.argmax() == a.argmax()
    # the control: a context that lost one token in its middle is far outside the bound
    fresh.reset()
    mid = len(tokens) // 2
    fresh.prefill(tokens[:mid] + tokens[mid + 1 :])
    other = float(np.abs(fresh.logits() - a).max())
    assert other > 100 * TOL, other
    # Radar: a sparse decode step with the session's incremental summaries, then with rebuilt ones
    assert len(tokens) > RADAR.dense_below
    m.llama.eval([probe])
    d = m.logits()
    st = m.radar_stats()
    assert st.n_decode_radar > 0 and st.n_attended < st.n_kv  # sparse
    m.llama.n_tokens -= 1
    m.llama._ctx.kv_cache_seq_rm(-1, m.llama.n_tokens, -1)
    m.set_radar(m.radar)  # drops every summary: rebuilt from the same cells at the next step
    m.llama.eval([probe])
    np.testing.assert_allclose(d, m.logits(), atol=1e-4)
    return turn, len(tokens), err, float(np.abs(once - a).max()), other, st.n_attended, st.n_kv


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc")
def test_thousand_turns_with_context_shift():
    from radar_gguf.models import gemma3_model_path

    path = gemma3_model_path()
    with (
        radar_gguf.load(path, ctx=CTX, radar=RADAR, threads=1) as m,
        radar_gguf.load(path, ctx=CTX, radar=RADAR, threads=1) as fresh,
    ):
        probe = m.tokenize("\n", add_bos=False)[0]
        history = [{"role": "system", "content": SYSTEM}]
        sink = io.StringIO()
        rss, shifts, checked, fills, prompts = {}, 0, [], [], []
        t0 = time.perf_counter()
        due = [TURNS // 2, 3 * TURNS // 4]  # check at the first shift at or after each
        for turn in range(1, TURNS + 1):
            line = f"Turn {turn}: a colour?"
            if due and turn >= due[0]:
                messages, dropped = m.fit_chat(
                    history + [{"role": "user", "content": line}], reserve=MAX_TOKENS, keep=KEEP
                )
                if dropped:
                    due.pop(0)
                    tokens = m.chat_tokens(messages)[0]
                    checked.append(check(m, fresh, tokens, prompts, probe, turn))
                    prompts.append(tokens)
                    shifts += 1
                    history = messages[:-1]  # chat_turn below adds the user message again
            sink.seek(0)
            sink.truncate()
            history, last = chat_turn(m, history, line, max_tokens=MAX_TOKENS, keep=KEEP, out=sink)
            assert last is not None, sink.getvalue()  # every turn got a reply
            assert history[0]["role"] == "system" and history[0]["content"] == SYSTEM
            if turn == 1 or "(context full: dropped" in sink.getvalue():
                prompts.append(m.chat_tokens(history[:-1])[0])  # what this turn prefilled
                shifts += turn > 1
            fills.append(m.n_past)
            assert m.n_past <= CTX
            if turn in (1, TURNS // 10, TURNS // 2, TURNS):
                rss[turn] = rss_mib()
        elapsed = time.perf_counter() - t0

    print(
        f"\n{TURNS} turns in {elapsed:.0f} s; {shifts} context shifts; fill {min(fills)}..{max(fills)} tokens"
    )
    print("RSS MiB at turn " + ", ".join(f"{k}: {v:.1f}" for k, v in rss.items()))
    for turn, n, mx, once, other, attended, n_kv in checked:
        print(
            f"check at turn {turn} ({n} tokens): max |dlogit| vs a fresh context, same prefills {mx:.1e}, "
            f"one prefill {once:.2f} (same argmax), control {other:.2f}; Radar step attended {attended} "
            f"of {n_kv} cells, summaries equal to rebuilt ones"
        )
    assert shifts >= max(1, TURNS // 100)  # the context really shifted, many times
    assert len(checked) == 2, checked
    # the first turns touch the KV cache and buffers as the context fills (turn 1 to the first shift).
    # Measured from turn 500 to 1000: +87 MiB, with the second check's fresh-model prefills in between
    # (cause not isolated yet, see docs/reliability.md); this bound catches a leak of 256 KiB a turn.
    assert rss[TURNS] - rss[TURNS // 2] < 128, rss
