"""Time one ggml_radar_attn decode step on the CPU (the op alone, summaries already computed).

For A/B checks of the CPU kernel: run it against two builds of the library (LLAMA_CPP_LIB_PATH) on
the same machine, alternating, and compare the medians. The process CPU time is printed too: on a
machine shared with other jobs it moves much less than the wall time. Shapes default to the bundled Qwen2.5 0.5B
(14 query heads, 2 KV heads, head dim 64) at 32k with the default aspect 8 (segments of 22 cells,
top-46 for a 1024-token budget).

    python scripts/bench_radar_attn_cpu.py --n-kv 32768 --seg-len 22 --top-k 46 --threads 2
    python scripts/bench_radar_attn_cpu.py --rescore 4 --mass-target 0.99      # today's default selection
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ggml_ops import F16, F32, I32, Graph  # noqa: E402

from radar_gguf.config import SCORES, SUMMARY_TYPES  # noqa: E402
from radar_gguf.lab import reference as R  # noqa: E402


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-kv", type=int, default=32768)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=14, help="query heads")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seg-len", type=int, default=22)
    p.add_argument("--top-k", type=int, default=46)
    p.add_argument("--score", choices=SCORES, default="meanvar")
    p.add_argument("--summary-type", choices=sorted(SUMMARY_TYPES), default="f32")
    p.add_argument("--shared-gqa", action="store_true")
    p.add_argument(
        "--rescore", type=float, default=0.0, help="two stages: rescore x top-k candidates (0: one stage)"
    )
    p.add_argument(
        "--mass-target", type=float, default=0.0, help="stage two's mass target (0: a fixed budget)"
    )
    p.add_argument("--q-scale", type=float, default=1.0, help="scale of the random queries (larger: sharper)")
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--reps", type=int, default=50)
    return p


def main(argv: list[str] | None = None) -> None:
    args = setup_arg_parser().parse_args(argv)
    rng = np.random.default_rng(0)
    d, hq, hkv, n_kv, L = args.head_dim, args.heads, args.kv_heads, args.n_kv, args.seg_len
    score = SCORES.index(args.score)
    s_type = {"f32": F32, "f16": F16}[args.summary_type]
    n_seg = n_kv // L
    w = R.summary_width(score, d, 64)
    scale = d**-0.5
    with Graph(mem_mb=1024, threads=args.threads) as g:
        b = g.base
        q = g.tensor(rng.normal(size=(1, hq, 1, d)) * args.q_scale)
        k = g.tensor(rng.normal(size=(1, n_kv, hkv, d)), F16)
        v = g.tensor(rng.normal(size=(1, n_kv, hkv, d)), F16)
        m = g.tensor(np.zeros((1, 1, 1, n_kv)), F16)
        s = g.tensor(np.zeros((1, n_seg, hkv, w)), s_type)
        om = g.tensor(rng.normal(size=(64, d))) if args.score == "rf" else None
        ids = g.tensor(np.arange(n_seg).reshape(1, -1), I32)
        info = g.tensor(np.array([[n_seg, 0]]), I32)
        g.compute(b.ggml_radar_summarize(g.ctx, s, k, m, ids, om, score, L, scale))
        kp, vp = g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
        out = b.ggml_radar_attn(
            g.ctx, q, kp, vp, m, s, info, om, score, L, args.top_k, 1, 32, args.shared_gqa, scale, 0.0, 0.0
        )
        if args.rescore > 1:
            b.ggml_radar_attn_set_rescore(out, int(np.ceil(args.rescore * args.top_k)))
            b.ggml_radar_attn_set_mass(out, args.mass_target)
        g.compute(out)  # warm up
        times, cpu = [], []
        for _ in range(args.reps):
            t0, c0 = time.perf_counter(), time.process_time()
            g.compute(out)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    med = statistics.median(times) * 1e3
    print(
        f"radar_attn CPU: n_kv {n_kv}, {hq}/{hkv} heads, D {d}, L {L} ({n_seg} segments), top-{args.top_k}, "
        f"{args.score} {args.summary_type}{', shared' if args.shared_gqa else ''}"
        f"{f', rescore {args.rescore:g}, mass {args.mass_target:g}' if args.rescore > 1 else ''}, {args.threads} threads: "
        f"median {med:.3f} ms, min {min(times) * 1e3:.3f} ms over {args.reps}; "
        f"CPU time (all threads) median {statistics.median(cpu) * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
