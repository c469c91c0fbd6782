"""The KV cache's decode fast paths (patch 0005) give the same logits as llama.cpp's per-cell loops.

A one-token decode whose sequence holds every used cell, contiguous from cell 0, gets its KQ mask row as
"0 over the used cells, -inf after them" instead of a lookup per cell, and ``seq_rm`` past the last
position returns without a loop over the cells. ``LLAMA_KV_FAST_PATHS_DISABLE=1`` turns both off; the
same script runs once each way in a subprocess (the switch is read when the cache is created) and the
logits of every step must be equal bit for bit, dense and Radar, on a contiguous cache and on one with a
hole (where the fast path must not fire).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import sys
import numpy as np
import radar_gguf
from radar_gguf import RadarConfig

out = sys.argv[2]
rows = []
for radar in (None, RadarConfig(dense_below=64, seg_len_min=16, token_budget=64, n_recent=16)):
    with radar_gguf.load(sys.argv[1], ctx=1024, radar=radar, threads=2) as m:
        toks = m.tokenize("The quick brown fox jumps over the lazy dog. " * 80, add_bos=True)[:600]
        m.prefill(toks[:400])
        for t in toks[400:408]:  # contiguous cells
            m.llama.eval([t])
            rows.append(m.logits())
        # a hole in the middle: cells 100..199 emptied, the next tokens fill some of them again
        m.llama._ctx.kv_cache_seq_rm(0, 100, 200)
        for t in toks[408:416]:
            m.llama.eval([t])
            rows.append(m.logits())
np.save(out, np.stack(rows))
"""


def _logits(model_path, tmp_path, disable: bool) -> np.ndarray:
    out = tmp_path / f"logits-{int(disable)}.npy"
    env = dict(os.environ, LLAMA_KV_FAST_PATHS_DISABLE="1" if disable else "0")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_path), str(out)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(out)


@pytest.mark.slow  # two subprocesses, each loads the model twice and prefills 400 tokens
def test_fast_mask_and_seq_rm_give_the_same_logits(model_path, tmp_path):
    fast = _logits(model_path, tmp_path, disable=False)
    slow = _logits(model_path, tmp_path, disable=True)
    assert fast.shape == slow.shape == (32, fast.shape[1])
    np.testing.assert_array_equal(fast, slow)
    # the hole changed what the model sees: the check covers both kinds of cache, not one repeated
    assert np.abs(fast[8:16] - fast[:8]).max() > 1.0
