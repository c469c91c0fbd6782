"""A long chat session: 1000 turns on a 2k context through the REPL's turn function (run.chat_turn).

Checked: every turn answers; the context shifts (oldest turns dropped, the system prompt kept in the
KV cache); memory is flat (below); and at two shifts (the first after turn 500 and after turn 750):

- the session's context equals a fresh context holding the same tokens: a second model that made the
  same prefills (turn 1's prompt, then each shift's) gives the same next-token logits (max |dlogit|
  <= TOL), and one that prefilled them at once nearly the same top tokens (other batch splits: float
  noise of ~1 max |dlogit| here, so each one's argmax is among the other's top 5, not necessarily equal),
  while a context short of one token in its middle is far outside (asserted, so the check can
  fail). Right after a shift every cell holds prefill K/V: the system prompt's from turn 1, the rest
  evaluated again; later, tokens decoded with Radar carry its approximation in their K/V;
- Radar's incrementally maintained segment summaries equal summaries rebuilt from scratch: a sparse
  decode step gives the same logits (atol 1e-4: bitwise-same K/V) before and after dropping them all.

Memory, sampled every 10 turns after both contexts were filled once (pages touched): the live heap
(glibc's mallinfo2: bytes malloc'ed and not freed, mmapped chunks included) and the resident set. The
live heap swings by ~150 MiB within a cycle of context fills but has no trend: its mean over the last
quarter must be within 48 MiB of its mean over turns 250-500 (a leak of 0.1 MiB a turn fails). The
resident set also holds what glibc keeps of freed memory (its arena), a high-water mark that rises
slowly; its maximum after turn 500 must be within 96 MiB of its maximum before.

Figures (memory per checkpoint, shifts, wall time) are printed with ``-s`` and recorded in
docs/reliability.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
# budget_max_scale=1: Gemma (3 global layers of 18) would otherwise attend 4x the budget, all of its 512 cells
RADAR = RadarConfig(
    dense_below=256, aspect=1000.0, seg_len_min=32, token_budget=256, n_recent=32, budget_max_scale=1.0
)
SYSTEM = "You are a terse assistant. Answer in at most three words."


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def malloc_mib() -> tuple[float, float] | None:
    """(live heap, main arena size) in MiB from glibc's mallinfo2 (glibc >= 2.33), or None elsewhere.
    The live heap is what is malloc'ed and not freed, mmapped chunks included; the arena is the heap
    glibc holds, freed chunks included."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    mi = fn()
    return (mi.uordblks + mi.hblkhd) / 2**20, mi.arena / 2**20


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
    # top-k agreement, not argmax equality: another batch split is another float path (max |dlogit|
    # 0.8-1.1 on an AVX-512 host), enough to swap two near-tied top tokens
    assert a.argmax() in np.argsort(once)[-5:] and once.argmax() in np.argsort(a)[-5:]
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
@pytest.mark.slow
def test_thousand_turns_with_context_shift():
    from radar_gguf.models import gemma3_model_path

    path = gemma3_model_path()
    with (
        radar_gguf.load(path, ctx=CTX, radar=RADAR, threads=1) as m,
        radar_gguf.load(path, ctx=CTX, radar=RADAR, threads=1) as fresh,
    ):
        probe = m.tokenize("\n", add_bos=False)[0]
        # fill both contexts once, so that memory first touched by a full context is in the baseline
        filler = m.tokenize("a colour? " * CTX, add_bos=True)[: CTX - 1]
        for model in (m, fresh):
            model.prefill(filler)
            model.reset()
        history = [{"role": "system", "content": SYSTEM}]
        sink = io.StringIO()
        rss, heap, arena, shifts, checked, fills, prompts = {}, {}, {}, 0, [], [], []
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
            if turn % 10 == 0 or turn == 1:
                rss[turn] = rss_mib()
                mi = malloc_mib()
                heap[turn], arena[turn] = mi if mi else (None, None)
        elapsed = time.perf_counter() - t0

    print(
        f"\n{TURNS} turns in {elapsed:.0f} s; {shifts} context shifts; fill {min(fills)}..{max(fills)} tokens"
    )
    marks = [t for t in (1, TURNS // 10, TURNS // 4, TURNS // 2, 3 * TURNS // 4, TURNS) if t in rss]
    print("RSS MiB at turn " + ", ".join(f"{t}: {rss[t]:.1f}" for t in marks))
    if heap[1] is not None:
        print("live heap MiB at turn " + ", ".join(f"{t}: {heap[t]:.1f}" for t in marks))
        print("glibc arena MiB at turn " + ", ".join(f"{t}: {arena[t]:.1f}" for t in marks))
    for turn, n, mx, once, other, attended, n_kv in checked:
        print(
            f"check at turn {turn} ({n} tokens): max |dlogit| vs a fresh context, same prefills {mx:.1e}, "
            f"one prefill {once:.2f} (top-5 agree), control {other:.2f}; Radar step attended {attended} "
            f"of {n_kv} cells, summaries equal to rebuilt ones"
        )
    assert shifts >= max(1, TURNS // 100)  # the context really shifted, many times
    assert len(checked) == 2, checked

    def window(d, lo, hi):
        return [v for t, v in d.items() if lo <= t < hi]

    first = window(rss, TURNS // 10, TURNS // 2)
    second = window(rss, TURNS // 2, TURNS + 1)
    print(f"RSS max: turns {TURNS // 10}-{TURNS // 2} {max(first):.1f} MiB, after {max(second):.1f} MiB")
    if heap[1] is not None:
        early = np.mean(window(heap, TURNS // 4, TURNS // 2))
        late = np.mean(window(heap, 3 * TURNS // 4, TURNS + 1))
        print(f"live heap mean: turns {TURNS // 4}-{TURNS // 2} {early:.1f} MiB, last quarter {late:.1f} MiB")
        assert late - early < 48, (early, late)
    # glibc's retained heap: a bound that catches a leak of 0.2 MiB a turn
    assert max(second) - max(first) < 96, (max(first), max(second))
