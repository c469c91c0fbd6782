"""scripts/long_context.py: the tiled KV state that the long-context benchmarks decode over.

The benchmark's figures are only as good as the state it writes back; these tests check that llama.cpp
accepts it as a context of the asked length (a decode step at the next position succeeds only when the
restored positions end right before it) and that the tiling keeps the block's rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import long_context  # noqa: E402


def _state(n: int, rows: list[np.ndarray]) -> np.ndarray:
    """A single-stream sequence state of n cells (positions 0..n-1) with the given K then V rows per layer."""
    parts = [np.array([long_context.STATE_MAGIC, 0, 1, n], dtype=np.uint32).view(np.uint8)]
    meta = np.zeros((n, 3), dtype=np.int32)
    meta[:, 0] = np.arange(n)
    meta[:, 1] = 1
    parts.append(meta.view(np.uint8).ravel())
    parts.append(np.array([0, len(rows) // 2], dtype=np.uint32).view(np.uint8))
    for r in rows:
        parts.append(np.array([1], dtype=np.uint32).view(np.uint8))
        parts.append(np.array([r.shape[1]], dtype=np.uint64).view(np.uint8))
        parts.append(r.ravel())
    return np.concatenate(parts)


def test_tiled_state_repeats_the_block_rows_at_new_positions() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, size=(5, w), dtype=np.uint8) for w in (8, 8, 12, 12)]  # 2 layers, K and V
    block = long_context.Block(_state(5, rows))
    tiled = long_context.Block(block.tiled(12))
    assert tiled.n == 12
    for (t0, r0), (t1, r1) in zip(block.k + block.v, tiled.k + tiled.v):
        assert t0 == t1 == 1
        np.testing.assert_array_equal(r1, np.concatenate([r0, r0, r0[:2]]))
    meta = block.tiled(12)[16 : 16 + 12 * 12].view(np.int32).reshape(12, 3)
    assert meta[:, 0].tolist() == list(range(12))


def test_a_state_with_bytes_left_over_is_refused() -> None:
    raw = _state(3, [np.zeros((3, 4), dtype=np.uint8)] * 2)
    with pytest.raises(SystemExit, match="unparsed"):
        long_context.Block(np.concatenate([raw, np.zeros(4, dtype=np.uint8)]))


@pytest.mark.slow
def test_decodes_over_a_tiled_context_with_radar_on(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.json"
    env = {**os.environ, "LLAMA_RADAR": "budget=64,dense_below=128", "PYTHONPATH": str(REPO / "scripts")}
    cmd = [sys.executable, str(REPO / "scripts" / "long_context.py"), str(model_path), "--ngl", "0"]
    cmd += ["--threads", "2", "--ctk", "q8_0", "--block", "96", "--check", "160", "--depths", "160,400"]
    cmd += ["--steps", "2", "--json", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Radar on" in r.stderr  # the steps past 128 cells ran Radar's ops
    res = json.loads(out.read_text())
    assert [(row["depth"], row["fill"]) for row in res["rows"]] == [
        (160, "prefill"),
        (160, "tiled"),
        (400, "tiled"),
    ]
    assert all(row["tok_s"] > 0 for row in res["rows"])
