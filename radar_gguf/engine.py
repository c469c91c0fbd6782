"""Load a GGUF model with Radar and generate: the core API every front end is a thin layer over.

``stream_generate()`` is the one generation loop (prefill, then one decode step per token); it
yields a ``GenerationResponse`` per token with the text piece, the token id and timings.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import _lib
from .config import RadarConfig, RadarStats

DEFAULT_CTX = 8192
DEFAULT_MAX_TOKENS = 512

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class GenerationResponse:
    """One generated token (mlx-lm style)."""

    text: str  # the new text (may be empty while a multi-byte character is incomplete)
    token: int
    prompt_tokens: int  # tokens prefilled for this call (after prefix reuse)
    prompt_tps: float  # prefill tokens/s
    generation_tokens: int  # tokens generated so far
    generation_tps: float  # decode tokens/s so far
    context_tokens: int  # tokens in the context after this one
    finish_reason: Optional[str] = None  # "stop" | "length" | None while running
    radar: Optional[RadarStats] = None  # set on the last response


@dataclass
class _Timing:
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    gen_tokens: int = 0
    gen_s: float = 0.0
    history: list = field(default_factory=list)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Model:
    """A loaded model with its context. Use :func:`load` to make one; close it (or use ``with``)."""

    def __init__(self, path: Path, *, ctx: int, radar: Optional[RadarConfig], gpu_layers: int,
                 threads: Optional[int], seed: int, n_batch: int, verbose: bool, flash_attn: bool = True,
                 **llama_kwargs: Any) -> None:
        from .gguf_check import check_gguf

        llama_cpp = _lib.bindings()
        self.path = Path(path)
        self.info = check_gguf(self.path)  # clear errors before llama.cpp touches the file
        if ctx <= 0:
            raise ValueError(f"ctx must be positive, got {ctx}")
        trained = self.info.context_length
        if trained and ctx > trained:
            warnings.warn(
                f"--ctx {ctx} is above the {trained} tokens {self.path.name} was trained on; "
                "quality degrades past it unless the model uses RoPE scaling",
                stacklevel=3,
            )
        n_threads = threads or _default_threads()
        self.llama = llama_cpp.Llama(
            model_path=str(self.path), n_ctx=ctx, n_batch=n_batch, n_ubatch=min(n_batch, 512),
            n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=gpu_layers,
            flash_attn=flash_attn,  # Radar reads V untransposed; FA is also the fast dense path
            seed=seed, verbose=verbose, **llama_kwargs,
        )
        self.ctx = ctx
        self.seed = seed
        self._timing = _Timing()
        self.radar: RadarConfig = RadarConfig(enabled=False)
        try:
            self.set_radar(radar if radar is not None else RadarConfig())
        except _lib.RadarUnavailable as e:
            # e.g. a GPU whose kernels don't cover this head size: decode stays dense, visibly
            warnings.warn(f"{e}; decoding with dense attention", stacklevel=3)
        except Exception:
            self.close()
            raise

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and its context."""
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()
            self.llama = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Radar ----------------------------------------------------------------------------------
    def set_radar(self, cfg: RadarConfig) -> None:
        """Change the Radar parameters; takes effect at the next decode step."""
        _lib.radar_set(self.llama.ctx, cfg)
        self.radar = cfg

    def radar_stats(self) -> RadarStats:
        return _lib.radar_stats(self.llama.ctx)

    # -- tokens -----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llama.detokenize(list(tokens)).decode("utf-8", errors="replace")

    @property
    def n_past(self) -> int:
        """Tokens currently held in the context."""
        return self.llama.n_tokens

    def reset(self) -> None:
        """Forget the context (the next call prefills from scratch)."""
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()

    def logits(self) -> Any:
        """Logits of the last evaluated token, as a NumPy array [n_vocab] (a copy)."""
        import numpy as np

        n_vocab = self.llama.n_vocab()
        return np.ctypeslib.as_array(self.llama._ctx.get_logits(), shape=(n_vocab,)).copy()

    def prefill(self, tokens: Sequence[int]) -> int:
        """Make the context hold exactly ``tokens``, reusing the longest common prefix already there.

        Returns how many tokens were evaluated. Raises ValueError if they do not fit the context.
        """
        tokens = list(tokens)
        if len(tokens) > self.ctx:
            raise ValueError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.ctx}; "
                "raise --ctx or shorten the prompt"
            )
        llama = self.llama
        n_keep = 0
        held = llama.input_ids[: llama.n_tokens]
        for a, b in zip(held, tokens):
            if a != b:
                break
            n_keep += 1
        if n_keep == len(tokens) and n_keep > 0:
            n_keep -= 1  # re-evaluate the last token to get its logits
        llama.n_tokens = n_keep
        llama._ctx.kv_cache_seq_rm(-1, n_keep, -1)
        todo = tokens[n_keep:]
        if todo:
            llama.eval(todo)
        return len(todo)

    # -- generation ---------------------------------------------------------------------------------
    def stream_generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        add_bos: bool = True,
    ) -> Iterator[GenerationResponse]:
        """Generate from ``prompt`` (text or token ids), yielding one response per token.

        The context keeps the longest common prefix with the previous call (multi-turn chat
        does not re-prefill). Greedy when ``temperature`` is 0. Stops at an end-of-generation
        token, a ``stop`` string, ``max_tokens``, or a full context.
        """
        llama_cpp = _lib.bindings()
        llama = self.llama
        tokens = self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("empty prompt")
        if seed is not None:
            llama.set_seed(seed)

        t0 = time.perf_counter()
        n_prompt = self.prefill(tokens)
        t_prompt = time.perf_counter() - t0
        prompt_tps = n_prompt / t_prompt if t_prompt > 0 else 0.0
        self._timing.prompt_tokens, self._timing.prompt_s = n_prompt, t_prompt

        # one sampler for the whole generation: its RNG advances token by token (a fresh sampler per
        # token would reseed and draw the same random number every step)
        llama._sampler = llama._init_sampler(temp=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                             repeat_penalty=repeat_penalty)
        n_gen = 0
        t_gen0 = time.perf_counter()
        try:
            vocab = llama._model.vocab
            pending = b""  # bytes of an incomplete UTF-8 character
            text_so_far = ""
            finish: Optional[str] = None
            while finish is None:
                if n_gen >= max_tokens:
                    break
                token = llama.sample()
                n_gen += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    piece = ""
                else:
                    raw = pending + llama.detokenize([token], prev_tokens=llama.input_ids[: llama.n_tokens].tolist())
                    piece, pending = _split_utf8(raw)
                    if self.n_past >= self.ctx:
                        finish = "length"
                    else:
                        llama.eval([token])
                text_so_far += piece
                if stop and finish is None:
                    hit = min((i for i in (text_so_far.find(s) for s in stop) if i >= 0), default=-1)
                    if hit >= 0:
                        piece = piece[: max(0, len(piece) - (len(text_so_far) - hit))]
                        finish = "stop"
                elapsed = time.perf_counter() - t_gen0
                if finish is None and n_gen >= max_tokens:
                    finish = "length"
                yield GenerationResponse(
                    text=piece, token=token, prompt_tokens=n_prompt, prompt_tps=prompt_tps,
                    generation_tokens=n_gen, generation_tps=n_gen / elapsed if elapsed > 0 else 0.0,
                    context_tokens=self.n_past, finish_reason=finish,
                    radar=self.radar_stats() if finish else None,
                )
        finally:
            llama._sampler = None
            self._timing.gen_tokens, self._timing.gen_s = n_gen, time.perf_counter() - t_gen0

    def generate(self, prompt: Union[str, Sequence[int]], **kwargs: Any) -> str:
        """Generate and return the whole completion text (see :meth:`stream_generate`)."""
        return "".join(r.text for r in self.stream_generate(prompt, **kwargs))

    # -- chat -----------------------------------------------------------------------------------------
    def format_chat(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """Render ``messages`` with the model's chat template (from the GGUF); returns (prompt, stops)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self.llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            # no template in the file: a plain transcript
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", ["\nuser:"]

        def tok_text(t: int) -> str:
            return llama._model.token_get_text(t) if t >= 0 else ""

        fmt = Jinja2ChatFormatter(template=template, eos_token=tok_text(llama.token_eos()),
                                  bos_token=tok_text(llama.token_bos()))
        r = fmt(messages=list(messages))
        stops = r.stop if isinstance(r.stop, list) else ([r.stop] if r.stop else [])
        return r.prompt, stops

    def stream_chat(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[GenerationResponse]:
        """Stream the assistant's reply to ``messages`` (template applied, prefix reused)."""
        prompt, stops = self.format_chat(messages)
        bos_in_template = self.llama.token_bos() >= 0 and prompt.startswith(
            self.llama._model.token_get_text(self.llama.token_bos()))
        kwargs.setdefault("stop", stops)
        yield from self.stream_generate(prompt, add_bos=not bos_in_template and _wants_bos(self), **kwargs)

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> str:
        """The assistant's whole reply to ``messages``."""
        return "".join(r.text for r in self.stream_chat(messages, **kwargs))

    def stats(self) -> dict:
        """Timings of the last call and context fill (for /stats)."""
        t = self._timing
        return {
            "prompt_tokens": t.prompt_tokens,
            "prompt_tps": t.prompt_tokens / t.prompt_s if t.prompt_s > 0 else 0.0,
            "generation_tokens": t.gen_tokens,
            "generation_tps": t.gen_tokens / t.gen_s if t.gen_s > 0 else 0.0,
            "context_tokens": self.n_past,
            "context_size": self.ctx,
        }


def _wants_bos(model: Model) -> bool:
    llama_cpp = _lib.bindings()
    return bool(llama_cpp.llama_vocab_get_add_bos(model.llama._model.vocab))


def _split_utf8(raw: bytes) -> tuple[str, bytes]:
    """Decode the complete UTF-8 prefix of ``raw``; return it and the incomplete tail."""
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            return raw[:cut].decode("utf-8"), raw[cut:]
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace"), b""


def resolve_model_path(model: Optional[Union[str, os.PathLike]], *, progress: bool = True) -> Path:
    """A local GGUF path for ``model``: None → the bundled model; a path; or a hub spec (user/repo:QUANT)."""
    if model is None:
        from .models import default_model_path

        return default_model_path(progress=progress)
    spec = os.fspath(model)
    from . import hub

    if hub.is_local_path(spec):
        return Path(spec)
    return hub.resolve_model(spec, progress=progress)[0]


def load(
    model: Optional[Union[str, os.PathLike]] = None,
    *,
    ctx: int = DEFAULT_CTX,
    radar: Optional[RadarConfig] = None,
    gpu_layers: int = 0,
    threads: Optional[int] = None,
    seed: int = 0,
    n_batch: int = 512,
    verbose: bool = False,
    flash_attn: bool = True,
    **llama_kwargs: Any,
) -> Model:
    """Load a GGUF model with Radar decoding.

    Args:
        model: a local ``.gguf`` path, a Hugging Face spec (``user/repo:Q4_K_M``,
            ``user/repo/file.gguf``), or None for the bundled Qwen2.5-Coder-0.5B-Instruct.
        ctx: context length in tokens.
        radar: Radar parameters (default: ``RadarConfig()``); ``RadarConfig(enabled=False)`` is dense.
        gpu_layers: layers to offload to the GPU (CUDA/Metal builds); -1 for all.
        threads: CPU threads (default: all available cores).
        seed: sampling seed.
        flash_attn: flash attention (Radar needs it; off only for dense-only comparisons).
        llama_kwargs: passed on to ``llama_cpp.Llama`` (e.g. ``type_k``, ``type_v``).
    """
    path = resolve_model_path(model)
    return Model(path, ctx=ctx, radar=radar, gpu_layers=gpu_layers, threads=threads, seed=seed,
                 n_batch=n_batch, verbose=verbose, flash_attn=flash_attn, **llama_kwargs)
