#!/usr/bin/env python3
"""Decode speed at 128k-1M tokens of context, over a KV cache filled by tiling one prefilled block.

    LLAMA_RADAR=1 python scripts/long_context.py MODEL --ngl 99 --ctk q8_0 \
        --block 65536 --check 131072 --depths 131072,262144,524288,1048576 --json out.json

A real prefill of 1M tokens outlasts any benchmark run (attention over the prompt is quadratic), so
this fills the cache the way a restored session does: it prefills `--block` pseudo-random tokens
for real, reads that sequence's KV state (`llama_state_seq_get_data`), and writes back a state of
`depth` cells whose keys and values repeat the block's, at positions 0..depth-1. Restoring a state
drops Radar's summaries, so the first decode step after it summarizes every segment in bulk, as the
first step after a long prompt does; its time is reported apart (`first_step_ms`) from the steady
steps (`tok_s`, the median step). The cost of a step depends on the cell count, the cache types and
(under Radar) on how the selection spreads, not on the cells' positions, so a tiled cache should
cost what a prefilled one costs: `--check D` also prefills the block on to D tokens for real and
measures decode there first, so the two can be compared at one depth in one run.

The state blob is the pinned llama.cpp's sequence format (magic, seq id, stream count, then per
stream the cells' positions and each layer's K rows and V rows); the block is parsed strictly and
anything else (several streams, transposed V, cells of several sequences) is refused. It needs
numpy and the pinned llama-cpp-python bindings' `llama_cpp` directory on PYTHONPATH, the library
through LLAMA_CPP_LIB_PATH, like scripts/radar_logits.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import sys
import time

import numpy as np
from radar_logits import _bindings, fill_batch

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
STATE_MAGIC = 0xAF143CD8  # llama-context.cpp io_magic of the pinned tree


class Block:
    """The parsed sequence state of one prefilled block: per layer its K rows and V rows."""

    def __init__(self, raw: np.ndarray) -> None:
        def u32(off: int) -> int:
            return struct.unpack_from("<I", raw, off)[0]

        def u64(off: int) -> int:
            return struct.unpack_from("<Q", raw, off)[0]

        if u32(0) != STATE_MAGIC:
            sys.exit("long_context: the sequence state does not start with the pinned tree's magic")
        if u32(8) != 1:
            sys.exit(f"long_context: {u32(8)} KV streams; only a single-stream cache is supported")
        self.n = n = u32(12)
        meta = raw[16 : 16 + 12 * n].view(np.int32).reshape(n, 3)  # [n, (pos, n_seq_id, seq_id)]
        if not (meta[:, 1] == 1).all():
            sys.exit("long_context: the block's cells belong to several sequences")
        off = 16 + 12 * n
        v_trans, n_layer = u32(off), u32(off + 4)
        if v_trans:
            sys.exit("long_context: transposed V (flash attention off) is not supported")
        off += 8
        self.k: list[tuple[int, np.ndarray]] = []  # per layer: (ggml type, [n, row bytes])
        self.v: list[tuple[int, np.ndarray]] = []
        for rows in (self.k, self.v):
            for _ in range(n_layer):
                t, row = u32(off), u64(off + 4)
                off += 12
                rows.append((t, raw[off : off + n * row].reshape(n, row)))
                off += n * row
        if off != len(raw):
            sys.exit(f"long_context: {len(raw) - off} bytes of the state left unparsed")

    def tiled(self, depth: int, seq_id: int = 0) -> np.ndarray:
        """A state of `depth` cells at positions 0..depth-1 whose rows repeat the block's."""
        n_layer = len(self.k)
        size = 16 + 12 * depth + 8 + sum(12 + depth * r.shape[1] for _, r in self.k + self.v)
        out = np.empty(size, dtype=np.uint8)
        out[0:16].view(np.uint32)[:] = (STATE_MAGIC, seq_id, 1, depth)
        meta = out[16 : 16 + 12 * depth].view(np.int32).reshape(depth, 3)
        meta[:, 0] = np.arange(depth, dtype=np.int32)
        meta[:, 1] = 1
        meta[:, 2] = seq_id
        off = 16 + 12 * depth
        out[off : off + 8].view(np.uint32)[:] = (0, n_layer)
        off += 8
        for t, rows in self.k + self.v:
            out[off : off + 4].view(np.uint32)[0] = t
            out[off + 4 : off + 12].view(np.uint64)[0] = rows.shape[1]
            off += 12
            dst = out[off : off + depth * rows.shape[1]].reshape(depth, rows.shape[1])
            for i in range(0, depth, self.n):
                m = min(self.n, depth - i)
                dst[i : i + m] = rows[:m]
            off += depth * rows.shape[1]
        assert off == size
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ngl", type=int, default=99, help="layers on the GPU(s)")
    ap.add_argument("--ctk", choices=sorted(GGML_TYPES), default="f16", help="K and V cache type")
    ap.add_argument("--block", type=int, default=65536, help="tokens prefilled for real and tiled")
    ap.add_argument("--depths", default="131072,262144,524288,1048576", help="comma-separated")
    ap.add_argument("--check", type=int, default=0, help="also decode after a real prefill to this depth")
    ap.add_argument("--steps", type=int, default=32, help="decode steps a depth (after the first)")
    ap.add_argument(
        "--ubatch",
        type=int,
        default=512,
        help="physical batch of the prefill and of the context (default 512)",
    )
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    depths = sorted(int(d) for d in args.depths.split(","))
    if args.block < 1 or depths[0] < 1 or args.check < 0 or args.ubatch < 1:
        sys.exit("long_context: --block, --depths, --check and --ubatch must be positive")
    n_ctx = max(depths + [args.check, args.block]) + args.steps + 256

    L = _bindings()
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = args.ngl
    model = L.llama_model_load_from_file(args.model.encode(), mp)
    if not model:
        sys.exit(f"long_context: cannot load {args.model}")
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    n_ctx_train = L.llama_model_n_ctx_train(model)

    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = args.ubatch
    cp.flash_attn_type = 1  # Radar reads V untransposed
    cp.type_k = cp.type_v = GGML_TYPES[args.ctk]
    cp.n_threads = cp.n_threads_batch = args.threads
    rope_scale = 1.0
    if n_ctx > n_ctx_train:
        # linear RoPE scaling to the context, as a user would set it (speed does not depend on it)
        rope_scale = n_ctx / n_ctx_train
        cp.rope_scaling_type = 1
        cp.rope_freq_scale = 1.0 / rope_scale
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("long_context: cannot create the context")
    mem = L.llama_get_memory(ctx)

    rng = np.random.default_rng(args.seed)
    batch = L.llama_batch_init(args.ubatch, 0, 1)

    def decode(pos: int, n: int, want_last: bool) -> None:
        fill_batch(batch, rng.integers(16, n_vocab, size=n, dtype=np.int32), pos, want_last)
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"long_context: llama_decode returned {rc} at position {pos}")

    def prefill(start: int, end: int) -> float:
        t0 = time.perf_counter()
        for pos in range(start, end, args.ubatch):
            decode(pos, min(args.ubatch, end - pos), False)
        L.llama_synchronize(ctx)
        return time.perf_counter() - t0

    def steps(depth: int) -> dict:
        times = []
        for s in range(args.steps + 1):
            t0 = time.perf_counter()
            decode(depth + s, 1, True)
            L.llama_synchronize(ctx)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times[1:]))
        return {
            "first_step_ms": round(times[0] * 1e3, 2),
            "step_ms": round(med * 1e3, 3),
            "tok_s": round(1.0 / med, 2),
        }

    results: dict = {
        "model": os.path.basename(args.model),
        "cache_type": args.ctk,
        "n_ctx": n_ctx,
        "rope_freq_scale": round(1.0 / rope_scale, 6),
        "block": args.block,
        "ubatch": args.ubatch,
        "steps": args.steps,
        "rows": [],
    }
    t_block = prefill(0, args.block)
    results["block_prefill_tok_s"] = round(args.block / t_block, 1)
    print(f"block: {args.block} tokens prefilled in {t_block:.1f} s", flush=True)
    size = L.llama_state_seq_get_size(ctx, 0)
    raw = np.empty(size, dtype=np.uint8)
    u8p = ctypes.POINTER(ctypes.c_uint8)
    if L.llama_state_seq_get_data(ctx, raw.ctypes.data_as(u8p), size, 0) != size:
        sys.exit("long_context: cannot read the block's state")
    block = Block(raw)

    if args.check:
        t = prefill(args.block, args.check)
        row = {
            "depth": args.check,
            "fill": "prefill",
            "prefill_s": round(t_block + t, 1),
            **steps(args.check),
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    for depth in depths:
        L.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        state = block.tiled(depth)
        if L.llama_state_seq_set_data(ctx, state.ctypes.data_as(u8p), state.size, 0) != state.size:
            sys.exit(f"long_context: the tiled state of {depth} cells was not restored")
        t_fill = time.perf_counter() - t0
        del state
        row = {"depth": depth, "fill": "tiled", "fill_s": round(t_fill, 1), **steps(depth)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
