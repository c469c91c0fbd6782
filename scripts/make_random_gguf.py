#!/usr/bin/env python3
"""Write a random-weight F16 GGUF with the shapes of a real model (speed measurements only).

    python scripts/make_random_gguf.py --shape llama-1b out.gguf   # then llama-quantize out.gguf q.gguf Q4_K_M

Real model files do not fit through the 64 MiB link to the GPU machine; decode speed depends only on
shapes and types, so the benchmarks there use these. Needs numpy and the `gguf` package (or the
llama.cpp tree's gguf-py on PYTHONPATH).
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPES = {
    # name: (n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, rope_theta, context)
    "llama-1b": (16, 2048, 8192, 32, 8, 128256, 500000.0, 131072),
    "llama-8b": (32, 4096, 14336, 32, 8, 128256, 500000.0, 131072),
    "qwen2.5-0.5b": (24, 896, 4864, 14, 2, 151936, 1000000.0, 32768),
    # head dim 80: outside the CUDA Radar kernels (64/128/256), for the fallback check
    "d80-small": (4, 2560, 6912, 32, 32, 32000, 10000.0, 16384),
    # Gemma 3 4B: head dim 256, sliding-window layers (1024) with every 6th layer global
    "gemma3-4b": (34, 2560, 10240, 8, 4, 262144, 1000000.0, 131072),
    # one layer, one head of dim 64: the per-step host work of a 128k context stands out (perf on the CPU)
    "tiny-1l": (1, 64, 128, 1, 1, 32000, 500000.0, 131072),
}
# architecture-specific extras: (arch, head dim, sliding window)
ARCH = {"gemma3-4b": ("gemma3", 256, 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-1b")
    ap.add_argument("--vocab", type=int, default=None, help="override the vocabulary size")
    ap.add_argument("out")
    args = ap.parse_args()
    import gguf

    n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, theta, n_ctx = SHAPES[args.shape]
    n_vocab = args.vocab or n_vocab
    arch, d, swa = ARCH.get(args.shape, ("llama", n_embd // n_head, 0))
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(args.out, arch)
    w.add_name(f"random-{args.shape}")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    if arch == "gemma3":
        w.add_key_length(d)
        w.add_value_length(d)
        w.add_sliding_window(swa)
    else:
        w.add_rope_dimension_count(d)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # a minimal SentencePiece-style vocabulary: 3 control tokens, the 256 byte tokens (radar_gguf's
    # checks and llama.cpp's tokenizer want them), then placeholders
    w.add_tokenizer_model("llama")
    words = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    words += [f"<t{i}>".encode() for i in range(len(words), n_vocab)]
    w.add_token_list(words)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([3, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    # weights are slices of one pool of random bits made into f16 values of magnitude in [2^-7, 2^-6) with a
    # random sign: an 8B shape takes seconds instead of minutes of normal sampling, and decode speed does not
    # depend on the values
    pool = np.frombuffer(
        rng.bytes(2 * max(n_vocab * n_embd, n_embd * n_ff, n_embd * d * n_head)), dtype=np.uint16
    )

    def t(name: str, *shape: int) -> None:
        n = int(np.prod(shape))
        off = int(rng.integers(0, pool.size - n + 1))
        bits = (pool[off : off + n] & 0x83FF) | 0x2000  # sign, mantissa, exponent 2^-7
        w.add_tensor(name, bits.view(np.float16).reshape(shape[::-1]))  # ggml shape order is reversed

    def norm(name: str, n: int = n_embd) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    t("token_embd.weight", n_embd, n_vocab)
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        t(f"blk.{i}.attn_q.weight", n_embd, d * n_head)
        t(f"blk.{i}.attn_k.weight", n_embd, d * n_head_kv)
        t(f"blk.{i}.attn_v.weight", n_embd, d * n_head_kv)
        t(f"blk.{i}.attn_output.weight", d * n_head, n_embd)
        norm(f"blk.{i}.ffn_norm.weight")
        t(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
        t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
        t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
        if arch == "gemma3":
            norm(f"blk.{i}.attn_q_norm.weight", d)
            norm(f"blk.{i}.attn_k_norm.weight", d)
            norm(f"blk.{i}.post_attention_norm.weight")
            norm(f"blk.{i}.post_ffw_norm.weight")
    norm("output_norm.weight")
    if arch != "gemma3":  # Gemma ties the output to the token embeddings
        t("output.weight", n_embd, n_vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(args.out)


if __name__ == "__main__":
    main()
