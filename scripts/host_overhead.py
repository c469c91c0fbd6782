"""Time decode steps at a deep context on a tiny model, where the host's per-step work dominates.

    python scripts/make_random_gguf.py --shape tiny-1l tiny1l.gguf
    python scripts/host_overhead.py tiny1l.gguf --depth 128k --mode radar
    LLAMA_KV_FAST_PATHS_DISABLE=1 python scripts/host_overhead.py tiny1l.gguf --depth 128k --mode radar

With one 64-wide layer the model's own compute is tiny, so what grows with the depth is llama.cpp's
per-step host work (KQ mask, KV bookkeeping) and the bindings'; profile it with
``perf record -g -p PID`` once "decoding" is printed. Random tokens, greedy steps through
``Model.llama.eval``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import radar_gguf
from radar_gguf import RadarConfig
from radar_gguf.sizes import argparse_size


def setup_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="GGUF file (e.g. the tiny-1l shape of make_random_gguf.py)")
    ap.add_argument("--depth", type=argparse_size, default=131072, help="prefilled tokens (128k style sizes)")
    ap.add_argument("--mode", choices=("dense", "radar"), default="radar")
    ap.add_argument("--seconds", type=float, default=3.0, help="decode for this long")
    ap.add_argument("-t", "--threads", type=int, default=1)
    return ap


def main(argv=None) -> None:
    args = setup_arg_parser().parse_args(argv)
    radar = RadarConfig() if args.mode == "radar" else None
    room = 8192  # decode steps must fit after the prefill
    m = radar_gguf.load(args.model, ctx=args.depth + room, radar=radar, threads=args.threads)
    rng = np.random.default_rng(0)
    n_vocab = m.llama.n_vocab()
    toks = rng.integers(259, n_vocab, args.depth).tolist()  # past the control and byte tokens
    t0 = time.perf_counter()
    for i in range(0, args.depth, 8192):
        m.llama.eval(toks[i : i + 8192])
        print(
            f"prefill {min(i + 8192, args.depth)}/{args.depth} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    print(f"decoding (pid {os.getpid()})", file=sys.stderr, flush=True)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds and n < room - 1:
        m.llama.eval([int(rng.integers(259, n_vocab))])
        n += 1
    ms = 1e3 * (time.perf_counter() - t0) / n
    fast = "off" if os.environ.get("LLAMA_KV_FAST_PATHS_DISABLE", "0") not in ("", "0") else "on"
    print(f"{args.mode}, depth {args.depth}, fast paths {fast}: {n} steps, {ms:.3f} ms a step")


if __name__ == "__main__":
    main()
