#!/usr/bin/env python3
"""Decode throughput of `radar-gguf serve` with 1, 4 and 8 concurrent chat streams at a long context.

The prompts are cut to --depth tokens with the server's own tokenizer. For each attention mode (Radar, dense) it starts one server with as many slots as the largest stream
count, prefills every slot once with its own long prompt (slot i always gets prompt i, so later rounds
reuse the cached prompt and only decode), then for each stream count N sends N concurrent streaming
chat requests and measures the decode phase: the tokens all N streams produce between the moment the
last of them starts decoding and the moment the first one finishes, over that time. Prints total
tokens/s and the speedup over one stream, per mode.

    python scripts/bench_serve.py --depth 16k --streams 1,4,8              # the model: bundled
    python scripts/bench_serve.py --depth 4k --streams 1,4 --radar-dense-below 1024

Extra arguments after -- go to `radar-gguf serve` (e.g. -- --threads 2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from radar_gguf.sizes import argparse_size  # noqa: E402

WORDS = (
    "river stone lantern orchard copper meadow signal harbor violet engine quiet summit ledger "
    "marble falcon thunder cedar glacier mosaic pepper canyon velvet saddle beacon willow"
).split()


def filler(n_words: int, seed: int) -> str:
    """Deterministic text, different per seed, with a sentence structure a model can follow."""
    out, x = [], seed * 2654435761 % (1 << 32) or 1
    for i in range(n_words):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(WORDS[x % len(WORDS)] + ("." if i % 12 == 11 else ""))
    return " ".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, ctx: int, slots: int, radar: bool, extra: list) -> tuple:
    port = free_port()
    cmd = [sys.executable, "-m", "radar_gguf.serve", *([model] if model else []), "--ctx", str(ctx)]
    cmd += [
        "--parallel",
        str(slots),
        "--port",
        str(port),
        "--quiet",
        *([] if radar else ["--no-radar"]),
        *extra,
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if sel.select(timeout=1):
            m = re.search(r"listening on (http://\S+?)/v1", p.stdout.readline())
            if m:
                return p, m.group(1)
    p.kill()
    raise SystemExit("the server did not start")


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def fit(url: str, text: str, depth: int) -> str:
    """``text`` cut to ``depth`` tokens of the served model (its own tokenizer, through the server)."""
    toks = post(url, "/tokenize", {"content": text})["tokens"]
    return post(url, "/detokenize", {"tokens": toks[:depth]})["content"] if len(toks) > depth else text


def stream_chat(url: str, prompt: str, slot: int, max_tokens: int, out: dict) -> None:
    body = {
        "messages": [{"role": "user", "content": prompt + "\n\nContinue the list in the same style."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "id_slot": slot,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    times = []
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                ev = json.loads(line[6:])
                if ev["choices"] and ev["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter())
    out[slot] = times


def round_(url: str, prompts: list, n: int, max_tokens: int) -> dict:
    out: dict = {}
    ts = [threading.Thread(target=stream_chat, args=(url, prompts[i], i, max_tokens, out)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    start = max(v[0] for v in out.values())  # every stream decoding from here
    end = min(v[-1] for v in out.values())  # ... until the first one ends
    toks = sum(sum(1 for t in v if start < t <= end) for v in out.values())
    return {"streams": n, "tokens": toks, "seconds": end - start, "tps": toks / max(end - start, 1e-9)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--depth", type=argparse_size, default=argparse_size("16k"), help="prompt tokens, about")
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--modes", default="radar,dense")
    ap.add_argument("--json", default=None, help="also write the results here")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    streams = [int(s) for s in args.streams.split(",")]
    texts = [filler(args.depth, seed=i + 1) for i in range(max(streams))]  # >= 1 token a word; cut below
    ctx = args.depth + args.max_tokens + 1024
    results: dict = {}
    prefill_s: dict = {}  # the concurrent prefill of every slot, per mode
    for mode in args.modes.split(","):
        proc, url = start(args.model, ctx, max(streams), mode == "radar", extra)
        try:
            prompts = [fit(url, t, args.depth) for t in texts]
            t0 = time.perf_counter()
            round_(url, prompts, max(streams), 2)  # prefill every slot once
            prefill_s[mode] = round(time.perf_counter() - t0, 1)
            print(f"{mode}: prefilled {max(streams)} slots in {prefill_s[mode]:.0f} s", file=sys.stderr)
            rows = [round_(url, prompts, n, args.max_tokens) for n in streams]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        base = rows[0]["tps"]
        for r in rows:
            r["vs_one_stream"] = r["tps"] / base
            print(
                f"{mode:6s} {r['streams']} streams: {r['tps']:7.2f} tok/s total ({r['vs_one_stream']:.2f}x one stream)"
            )
        results[mode] = rows
    if "radar" in results and "dense" in results:
        for r, d in zip(results["radar"], results["dense"]):
            print(f"{r['streams']} streams: Radar/dense {r['tps'] / d['tps']:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "depth": args.depth,
                    "cpu_threads": os.cpu_count(),
                    "slots": max(streams),
                    "prefill_s": prefill_s,
                    "server_args": extra,
                    **results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
