#!/usr/bin/env python3
"""Fuzz GGUF headers against radar_gguf's validator and llama.cpp's loader, within a time budget.

    python scripts/fuzz_gguf.py --budget 600 --corpus tests/data/gguf_corpus

Each case is a small, valid GGUF model (a 2-layer llama with a 32-token vocabulary, made here with
the ``gguf`` package) with mutations drawn by hypothesis: bytes of the header flipped, integer
fields (counts, string lengths, metadata values, tensor dims, types and offsets) set to boundary
values, or the file cut short. ``gguf_check.check_gguf`` must either reject the case with a
GGUFError or accept it; an accepted case is then loaded by llama.cpp (model, a 64-token context,
a short text tokenized and decoded) in a forked child, which must exit normally (a clean load failure is fine).

A finding is a case where the validator raises anything but GGUFError, or accepts a file that
makes llama.cpp crash (a signal, e.g. SIGABRT from GGML_ASSERT or SIGFPE) or hang. Findings are
written to ``--corpus`` (one ``.gguf`` per distinct failure, named by what happened), where
tests/test_reliability_files.py replays them through the CLI on every CI run. Needs hypothesis and
gguf (``pip install ".[fuzz]"``). Exit status: 0 if no new finding, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
ROUND = 200  # examples per hypothesis run; runs repeat (with the next seed) until the budget is spent
INTERESTING = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    31,
    32,
    63,
    64,
    255,
    256,
    1 << 15,
    65535,
    65536,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    (1 << 32) - 1,
    1 << 62,
    1 << 63,
    (1 << 63) - 1,
    (1 << 64) - 1,
]


def tiny_model(path: Path, n_embd: int = 32, n_layer: int = 2) -> Path:
    """A small valid llama GGUF that llama.cpp loads and runs (random F32 weights; a SentencePiece
    vocabulary of <unk>, <s>, </s> and the 256 byte tokens, so any text tokenizes)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    n_head, n_head_kv, n_ff = 4, 2, 64
    d = n_embd // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("fuzz seed")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(d)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    n_vocab = len(tokens)
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256)  # unknown, control, control, byte
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def t(name: str, *shape: int) -> None:  # shape in ggml order (row length first)
        w.add_tensor(name, rng.standard_normal(shape[::-1]).astype(np.float32) * 0.02)

    t("token_embd.weight", n_embd, n_vocab)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        t(f"blk.{i}.attn_q.weight", n_embd, d * n_head)
        t(f"blk.{i}.attn_k.weight", n_embd, d * n_head_kv)
        t(f"blk.{i}.attn_v.weight", n_embd, d * n_head_kv)
        t(f"blk.{i}.attn_output.weight", d * n_head, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        t(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
        t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
        t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    t("output.weight", n_embd, n_vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return path


def int_fields(path: Path) -> tuple[list[tuple[int, int, str]], int]:
    """Every integer field of the header as (offset, size in bytes, what), and the header's end."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out: list[tuple[int, int, str]] = [(4, 4, "version"), (8, 8, "n_tensors"), (16, 8, "n_kv")]
    for f in r.fields.values():
        for idx, part in enumerate(f.parts):
            if part.dtype.kind in "iu" and part.size <= 4:  # lengths, types, counts, small arrays
                off = int(part.ctypes.data - r.data.ctypes.data)
                for j in range(min(part.size, 4)):
                    size = part.dtype.itemsize
                    out.append((off + j * size, size, f"{f.name}[{idx}]"))
    data = path.read_bytes()  # tensor infos are not in r.fields: find each by its name
    for t in r.tensors:
        nb = t.name.encode()
        at = data.index(struct.pack("<Q", len(nb)) + nb) + 8 + len(nb)
        n_dims = struct.unpack_from("<I", data, at)[0]
        out.append((at - 8 - len(nb), 8, f"{t.name}.name_len"))
        out.append((at, 4, f"{t.name}.n_dims"))
        for k in range(n_dims):
            out.append((at + 4 + 8 * k, 8, f"{t.name}.ne[{k}]"))
        out.append((at + 4 + 8 * n_dims, 4, f"{t.name}.type"))
        out.append((at + 8 + 8 * n_dims, 8, f"{t.name}.offset"))
    return out, int(r.data_offset)


def run_llama(path: Path, timeout: float) -> tuple[str, str]:
    """Load ``path`` with llama.cpp in a forked child: ('ok'|'refused'|'crash'|'hang', detail)."""
    from radar_gguf import _lib

    C = _lib.bindings()
    pid = os.fork()
    if pid == 0:  # child: load, make a context, decode one token; exit 0 whatever llama.cpp says
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            mp = C.llama_model_default_params()
            model = C.llama_model_load_from_file(str(path).encode(), mp)
            if not model:
                os._exit(3)
            cp = C.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 64, 64, 64, 1, 1
            ctx = C.llama_init_from_model(model, cp)
            if not ctx:
                os._exit(4)
            vocab = C.llama_model_get_vocab(model)
            text = "hi \u00fc".encode()
            ids = (C.llama_token * 16)()
            n = C.llama_tokenize(vocab, text, len(text), ids, 16, True, False)
            batch = C.llama_batch_get_one(ids, max(1, min(n, 16)))
            code = 0 if C.llama_decode(ctx, batch) == 0 else 5
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", f"no exit within {timeout:.0f} s"
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return "crash", signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    return ("ok" if code == 0 else "refused"), f"exit {code}"


def check_case(path: Path, timeout: float) -> tuple[str, str]:
    """('rejected'|'ok'|'refused'|'crash'|'hang'|'validator-error', detail) for one file."""
    from radar_gguf.gguf_check import GGUFError, check_gguf

    try:
        check_gguf(path)
    except GGUFError as e:
        return "rejected", e.reason
    except Exception as e:  # a validator bug
        return "validator-error", f"{type(e).__name__}: {e}"
    return run_llama(path, timeout)


def mutate(seed: bytes, fields: list, header_end: int, ops: list) -> bytes:
    """Apply ``ops`` to ``seed``; a cut comes last (flips and field writes address the full file)."""
    data = bytearray(seed)
    ops = sorted(ops, key=lambda o: o[0] == "cut")
    for op in ops:
        kind = op[0]
        if kind == "flip":
            _, at, mask = op
            data[at % header_end] ^= mask or 1
        elif kind == "int":
            _, which, value = op
            off, size, _ = fields[which % len(fields)]
            data[off : off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
        elif kind == "cut":
            _, at = op
            del data[min(at, len(data)) :]
    return bytes(data)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600, help="seconds to fuzz (default: %(default)s)")
    ap.add_argument("--max-examples", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=10, help="seconds before a llama.cpp load is a hang")
    ap.add_argument(
        "--corpus",
        type=Path,
        default=REPO / "tests" / "data" / "gguf_corpus",
        help="where findings are written (default: %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: %(default)s)")
    args = ap.parse_args(argv)

    os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort in a child must not attach gdb
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    work = Path(tempfile.mkdtemp(prefix="fuzz_gguf_"))
    seed_path = tiny_model(work / "seed.gguf")
    seed_bytes = seed_path.read_bytes()
    fields, header_end = int_fields(seed_path)
    assert check_case(seed_path, args.timeout)[0] == "ok", "the seed model must load"

    op = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, header_end - 1), st.integers(1, 255)),
        st.tuples(
            st.just("int"),
            st.integers(0, len(fields) - 1),
            st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << 64) - 1)),
        ),
        st.tuples(st.just("cut"), st.integers(0, len(seed_bytes) - 1)),
    )
    counts: dict[str, int] = {}
    findings: dict[str, tuple[bytes, str]] = {}
    case = work / "case.gguf"
    t_end = time.monotonic() + args.budget

    @settings(max_examples=ROUND, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(op, min_size=1, max_size=3))
    def one(ops: list) -> None:
        if time.monotonic() > t_end:
            return
        data = mutate(seed_bytes, fields, header_end, ops)
        case.write_bytes(data)
        outcome, detail = check_case(case, args.timeout)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome in ("crash", "hang", "validator-error"):
            what = ",".join(fields[o[1] % len(fields)][2] if o[0] == "int" else o[0] for o in ops)
            key = f"{outcome}-{detail.split(':')[0]}-{what}"
            findings.setdefault(key, (data, detail))

    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() < t_end and sum(counts.values()) < args.max_examples:
        seed(args.seed + rounds)(one)()  # hypothesis runs ROUND examples per call
        rounds += 1
    n = sum(counts.values())
    print(
        f"fuzz_gguf: {n} cases in {time.monotonic() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    new = 0
    args.corpus.mkdir(parents=True, exist_ok=True)
    for key, (data, detail) in sorted(findings.items()):
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
        out = args.corpus / f"{name}-{hashlib.sha256(data).hexdigest()[:8]}.gguf"
        if not out.exists():
            out.write_bytes(data)
            new += 1
        print(f"  finding: {key}: {detail} -> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
