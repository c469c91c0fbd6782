"""Radar over llama.cpp's RPC backend against one process, on this machine: two workers on localhost plus
the local CPU, the layers split three ways.

    python scripts/rpc_split.py check --ctx 8k --steps 16 --out docs/results/rpc-split-logits-8k.json
    python scripts/rpc_split.py bench --depths 4k,16k --out docs/results/bench-cpu-rpc-split.json

``check``: greedy decoding after an essay prompt of ``--ctx`` minus ``--steps`` tokens, one process and the
split, dense and Radar: the greedy tokens and the logits of each step (max and mean |dlogit|, the split's
dense distance to one process being the float noise of the workers' CPU path).
``bench``: decode tokens/s of one process and the split at each depth, both models loaded side by side and
their rounds alternated (Radar and dense), with the bytes each decode step sends to and receives from the
workers (the kernel's TCP counters of the connections, ``ss -ti``).

Workers are started here (``radar-gguf rpc-server``, ``--worker-threads`` each) unless ``--rpc`` names some.
Written as a script, not a command: it measures the split, it is not a way to run one.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import radar_gguf
from radar_gguf import RadarConfig
from radar_gguf.bench import _decode_rate, device_name
from radar_gguf.lab.corpus import essay_tokens
from radar_gguf.rpc import probe
from radar_gguf.sizes import argparse_size, format_size

DENSE = RadarConfig(enabled=False)
NET_STEPS = 8  # decode steps whose network traffic is counted


def start_workers(n: int, threads: int) -> tuple[list[subprocess.Popen], list[str]]:
    procs, eps = [], []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "radar_gguf.rpc_server", "--port", str(port), "--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        eps.append(f"127.0.0.1:{port}")
    for p, ep in zip(procs, eps):
        while True:
            try:
                probe(ep, timeout=5)
                break
            except Exception:
                if p.poll() is not None:
                    raise SystemExit(f"the worker for {ep} exited with status {p.returncode}") from None
                time.sleep(0.2)
    return procs, eps


def tcp_bytes(endpoints: list[str]) -> tuple[int, int]:
    """(bytes sent to, bytes received from) the workers over this process's connections to them."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True).stdout
    sent = recv = 0
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if any(line.split()[-1] == ep for ep in endpoints if line.split()) and i + 1 < len(lines):
            info = lines[i + 1]
            a = re.search(r"bytes_acked:(\d+)", info)
            r = re.search(r"bytes_received:(\d+)", info)
            sent += int(a.group(1)) if a else 0
            recv += int(r.group(1)) if r else 0
    return sent, recv


def greedy(m, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    m.prefill(prompt)
    toks, logits = [], []
    for _ in range(steps):
        lg = m.logits()
        logits.append(lg)
        toks.append(int(lg.argmax()))
        m._eval([toks[-1]])
    return toks, np.stack(logits)


def check(args, eps: list[str]) -> dict:
    radar = RadarConfig(dense_below=args.dense_below)
    res: dict = {}
    for name, cfg in (("dense", DENSE), ("radar", radar)):
        for where, kw in (("one", {}), ("split", {"rpc": eps, "gpu_layers": args.split_layers})):
            with radar_gguf.load(args.model, ctx=args.ctx, radar=cfg, threads=args.threads, **kw) as m:
                prompt = essay_tokens(m, args.ctx - args.steps)
                t0 = time.perf_counter()
                toks, lg = greedy(m, prompt, args.steps)
                st = m.radar_stats()
                res[(name, where)] = (toks, lg, st, time.perf_counter() - t0, m.path.name)
                print(f"# {name} {where}: {time.perf_counter() - t0:.0f} s, radar steps {st.n_decode_radar}")
    out = {
        "model": res[("dense", "one")][4],
        "ctx": args.ctx,
        "steps": args.steps,
        "workers": len(eps),
        "split_layers": args.split_layers,
        "radar_config": radar.describe(),
        "device": device_name(),
    }
    for name in ("dense", "radar"):
        (t1, l1, s1, *_), (t2, l2, s2, *_) = res[(name, "one")], res[(name, "split")]
        same = next((i for i, (a, b) in enumerate(zip(t1, t2)) if a != b), len(t1))
        d = np.abs(l1[:same] - l2[:same]) if same else np.zeros(1)
        out[name] = {
            "greedy_tokens_equal": t1 == t2,
            "steps_before_first_difference": same,
            "max_abs_dlogit": float(d.max()),
            "mean_abs_dlogit": float(d.mean()),
            "radar_steps_one_split": [s1.n_decode_radar, s2.n_decode_radar],
            "attended_one_split": [s1.n_attended, s2.n_attended],
        }
        print(f"{name}: {out[name]}")
    return out


def bench(args, eps: list[str]) -> dict:
    depths = sorted(argparse_size(d) for d in args.depths.split(","))
    n_ctx = depths[-1] + args.n_gen + 64
    radar = RadarConfig(dense_below=args.dense_below)
    one = radar_gguf.load(args.model, ctx=n_ctx, threads=args.threads, radar=radar)
    split = radar_gguf.load(
        args.model, ctx=n_ctx, threads=args.threads, radar=radar, rpc=eps, gpu_layers=args.split_layers
    )
    tokens = essay_tokens(one, depths[-1] + args.n_gen + 1)
    out = {
        "model": one.path.name,
        "workers": len(eps),
        "split_layers": args.split_layers,
        "worker_threads": args.worker_threads,
        "threads": args.threads,
        "radar_config": radar.describe(),
        "device": device_name(),
        "n_gen": args.n_gen,
        "rounds": args.rounds,
        "depths": [],
    }
    for depth in depths:
        for m in (one, split):
            m.set_radar(DENSE)
            m.prefill(tokens[:depth])
        best = {(w, mode): 0.0 for w in ("one", "split") for mode in ("dense", "radar")}
        net = {}
        for _ in range(args.rounds):
            for mode, cfg in (("radar", radar), ("dense", DENSE)):
                for w, m in (("one", one), ("split", split)):
                    m.set_radar(cfg)
                    best[(w, mode)] = max(best[(w, mode)], _decode_rate(m, tokens, depth, args.n_gen))
        for mode, cfg in (("radar", radar), ("dense", DENSE)):
            # the traffic of plain decode steps (the graph is reused; the first step after a prefill also
            # sends the whole graph)
            split.set_radar(cfg)
            split.prefill(tokens[:depth])
            split._eval(tokens[depth : depth + 1])
            b0 = tcp_bytes(eps)
            for t in tokens[depth + 1 : depth + 1 + NET_STEPS]:
                split._eval([t])
            b1 = tcp_bytes(eps)
            net[mode] = ((b1[0] - b0[0]) / NET_STEPS, (b1[1] - b0[1]) / NET_STEPS)
        rec = {"depth": depth}
        for mode in ("radar", "dense"):
            rec[mode] = {
                "one_tok_s": round(best[("one", mode)], 2),
                "split_tok_s": round(best[("split", mode)], 2),
                "split_over_one": round(best[("split", mode)] / best[("one", mode)], 3),
                "bytes_sent_per_step": round(net.get(mode, (0, 0))[0]),
                "bytes_received_per_step": round(net.get(mode, (0, 0))[1]),
            }
        out["depths"].append(rec)
        print(f"{format_size(depth)}: {rec}")
    one.close()
    split.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("check", "bench"))
    p.add_argument("--model", default=None)
    p.add_argument("--rpc", default=None, help="workers to use instead of starting two here")
    p.add_argument("--worker-threads", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split-layers", type=int, default=16, help="layers on the workers (the last ones)")
    p.add_argument("--dense-below", type=int, default=1024)
    p.add_argument("--ctx", type=argparse_size, default=argparse_size("8k"))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--depths", default="4k,16k")
    p.add_argument("--n-gen", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    procs: list = []
    if args.rpc:
        eps = args.rpc.split(",")
    else:
        procs, eps = start_workers(2, args.worker_threads)
    try:
        res = check(args, eps) if args.what == "check" else bench(args, eps)
    finally:
        for pr in procs:
            pr.kill()
    res["command"] = "python scripts/rpc_split.py " + " ".join(sys.argv[1:])
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
