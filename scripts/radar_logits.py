#!/usr/bin/env python3
"""Record decode-step logits of a GGUF model, or compare two recordings (end-to-end backend checks).

    LLAMA_RADAR=1 python scripts/radar_logits.py run MODEL --ngl 99 --depth 8192 --steps 32 --out a.npy
    python scripts/radar_logits.py compare a.npy b.npy [--envelope c.npy d.npy]

`run` prefills `depth` pseudo-random tokens in batches (exact attention), then feeds `steps` more
tokens one at a time (the decode path, where Radar acts) and saves the logits of each step,
[steps, n_vocab] float32. Radar is configured through the library's `LLAMA_RADAR` environment
variable, so the same command records dense (`LLAMA_RADAR=0`) and Radar runs on any device.
`compare` prints max |diff|, mean KL(a || b) and top-1 agreement, and with `--envelope` the same
figures for a reference pair (e.g. dense CPU vs dense CUDA): the noise the backends make anyway.

It needs only numpy and the pinned llama-cpp-python bindings (their `llama_cpp` package directory on
PYTHONPATH, the library through LLAMA_CPP_LIB_PATH): it runs on the GPU machine without installing
radar_gguf.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import types

import numpy as np


def _bindings():
    # import llama_cpp.llama_cpp (the ctypes layer) without llama_cpp/__init__.py, which pulls in the
    # high-level API and its dependencies
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "radar_logits: put the pinned bindings' directory (the one holding llama_cpp/) on PYTHONPATH"
        )
    pkg = types.ModuleType("llama_cpp")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["llama_cpp"] = pkg
    return importlib.import_module("llama_cpp.llama_cpp")


def fill_batch(batch, tokens: np.ndarray, pos: int, want_last: bool) -> None:
    """Sequence 0's tokens at positions pos, pos+1, ... into a llama_batch; logits of the last if asked."""
    n = len(tokens)
    batch.n_tokens = n
    for i in range(n):
        batch.token[i] = int(tokens[i])
        batch.pos[i] = pos + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = want_last and i == n - 1


def cmd_run(args: argparse.Namespace) -> None:
    L = _bindings()
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = args.ngl
    mp.split_mode = {"none": 0, "layer": 1, "row": 2}[args.split_mode]
    if args.main_gpu is not None:
        mp.main_gpu = args.main_gpu
    model = L.llama_model_load_from_file(args.model.encode(), mp)
    if not model:
        sys.exit(f"radar_logits: cannot load {args.model}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    cp = L.llama_context_default_params()
    cp.n_ctx = args.depth + args.steps + 16
    cp.n_batch = cp.n_ubatch = 512
    cp.flash_attn_type = 1  # Radar reads V untransposed
    cp.n_threads = cp.n_threads_batch = args.threads
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("radar_logits: cannot create the context")

    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(16, n_vocab, size=args.depth + args.steps, dtype=np.int32)

    batch = L.llama_batch_init(512, 0, 1)

    def decode(start: int, n: int, want_last: bool) -> None:
        fill_batch(batch, tokens[start : start + n], start, want_last)
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"radar_logits: llama_decode returned {rc} at position {start}")

    t0 = time.perf_counter()
    for start in range(0, args.depth, 512):
        decode(start, min(512, args.depth - start), False)
    t_prefill = time.perf_counter() - t0

    out = np.empty((args.steps, n_vocab), dtype=np.float32)
    t0 = time.perf_counter()
    for s in range(args.steps):
        decode(args.depth + s, 1, True)
        out[s] = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    t_decode = time.perf_counter() - t0
    np.save(args.out, out)
    print(
        json.dumps(
            {
                "out": args.out,
                "depth": args.depth,
                "steps": args.steps,
                "prefill_s": round(t_prefill, 2),
                "decode_tok_s": round(args.steps / t_decode, 2),
            }
        )
    )
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """max |a-b|, mean KL(softmax a || softmax b) and top-1 agreement over the steps."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    la, lb = log_softmax(a), log_softmax(b)
    kl = (np.exp(la) * (la - lb)).sum(axis=1)
    return {
        "max_abs": float(np.abs(a - b).max()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agree": float((a.argmax(axis=1) == b.argmax(axis=1)).mean()),
    }


def cmd_compare(args: argparse.Namespace) -> None:
    res = {"pair": [args.a, args.b], **diff_stats(np.load(args.a), np.load(args.b))}
    if args.envelope:
        res["envelope"] = {
            "pair": args.envelope,
            **diff_stats(np.load(args.envelope[0]), np.load(args.envelope[1])),
        }
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("--ngl", type=int, default=0, help="layers on the GPU(s)")
    r.add_argument("--split-mode", choices=("none", "layer", "row"), default="layer")
    r.add_argument("--main-gpu", type=int, default=None)
    r.add_argument("--depth", type=int, default=8192, help="tokens prefilled before the decode steps")
    r.add_argument("--steps", type=int, default=32, help="decode steps recorded")
    r.add_argument("--threads", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument(
        "--envelope", nargs=2, default=None, help="a reference pair whose difference is the noise floor"
    )
    args = ap.parse_args()
    {"run": cmd_run, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    main()
