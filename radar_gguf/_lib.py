"""The native library: the pinned llama-cpp-python 0.3.36 bindings over our patched libllama.

The wheel installs the bindings (``llama_cpp``) with our libraries in ``llama_cpp/lib``; the
bindings load them from there, or from ``$LLAMA_CPP_LIB_PATH``. Here we check that the library
that got loaded is ours (it exports the Radar API and reports our version) and bind that API.
"""

from __future__ import annotations

import ctypes
import os
import types
from functools import lru_cache
from typing import Any, Optional

from . import __version__
from .config import SUMMARY_TYPES, RadarConfig, RadarStats


class LibraryError(ImportError):
    """The llama library is missing or is not radar_gguf's build."""


class RadarUnavailable(RuntimeError):
    """Radar cannot run for this model/context (no attention KV cache, or a device lacks the ops)."""


class llama_radar_params(ctypes.Structure):
    # struct llama_radar_params (include/llama.h, patch 0001)
    _fields_ = [
        ("enabled", ctypes.c_bool),
        ("score", ctypes.c_int32),
        ("n_feat", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("token_budget", ctypes.c_int32),
        ("n_sink", ctypes.c_int32),
        ("n_recent", ctypes.c_int32),
        ("aspect", ctypes.c_float),
        ("seg_len_min", ctypes.c_int32),
        ("dense_below", ctypes.c_int32),
        ("seed", ctypes.c_uint32),
        ("shared_gqa", ctypes.c_bool),
        ("summary_type", ctypes.c_int32),
        ("budget_max_scale", ctypes.c_float),
        ("rescore", ctypes.c_float),
        ("mass_target", ctypes.c_float),
        ("rescore_max", ctypes.c_float),
        ("rescore_mass", ctypes.c_float),
    ]


class llama_radar_stats(ctypes.Structure):
    # struct llama_radar_stats
    _fields_ = [
        ("n_decode_radar", ctypes.c_int64),
        ("n_restructure", ctypes.c_int64),
        ("n_seg_summarized", ctypes.c_int64),
        ("seg_len", ctypes.c_int32),
        ("n_seg", ctypes.c_int32),
        ("n_seg_selected", ctypes.c_int32),
        ("n_attended", ctypes.c_int32),
        ("n_kv", ctypes.c_int32),
        ("n_rescored", ctypes.c_int32),
    ]


@lru_cache(maxsize=1)
def bindings() -> Any:
    """Import ``llama_cpp`` (the pinned bindings) and check the library it loaded."""
    try:
        import llama_cpp
        import llama_cpp.llama_cpp as C
    except FileNotFoundError as e:  # the bindings raise this when libllama is absent
        where = os.environ.get("LLAMA_CPP_LIB_PATH") or "the llama_cpp/lib folder of the installed package"
        raise LibraryError(
            f"radar_gguf: libllama was not found in {where} ({e}). "
            "Install radar_gguf with `pip install .` (it builds the library), "
            "or point LLAMA_CPP_LIB_PATH at a directory holding our libllama.so."
        ) from e
    except ImportError as e:
        raise LibraryError(f"radar_gguf: cannot import the llama_cpp bindings: {e}") from e

    lib = C._lib
    if not hasattr(lib, "llama_radar_build_info"):
        raise LibraryError(
            f"radar_gguf: the library loaded from {lib._name} is not radar_gguf's build "
            "(it has no Radar API; an upstream llama-cpp-python is probably installed over ours, or "
            "LLAMA_CPP_LIB_PATH points elsewhere). Reinstall with `pip install --force-reinstall .`."
        )
    lib.llama_radar_build_info.restype = ctypes.c_char_p
    info = lib.llama_radar_build_info().decode()
    want = f"radar_gguf {__version__};"
    if not info.startswith(want):
        raise LibraryError(
            f"radar_gguf {__version__}: the library at {lib._name} reports '{info}'; "
            "the Python package and the library were built from different versions. Reinstall with `pip install .`."
        )
    if llama_cpp.__version__ != "0.3.36":
        raise LibraryError(
            f"radar_gguf needs the pinned llama_cpp bindings 0.3.36, found {llama_cpp.__version__}"
        )

    ctx_p = C.llama_context_p_ctypes
    lib.llama_radar_default_params.argtypes = []
    lib.llama_radar_default_params.restype = llama_radar_params
    lib.llama_radar_set_params.argtypes = [ctx_p, ctypes.POINTER(llama_radar_params)]
    lib.llama_radar_set_params.restype = ctypes.c_int32
    lib.llama_radar_get_params.argtypes = [ctx_p, ctypes.POINTER(llama_radar_params)]
    lib.llama_radar_get_params.restype = ctypes.c_int32
    lib.llama_radar_get_stats.argtypes = [ctx_p, ctypes.POINTER(llama_radar_stats)]
    lib.llama_radar_get_stats.restype = ctypes.c_int32
    lib.llama_radar_reset_stats.argtypes = [ctx_p]
    lib.llama_radar_reset_stats.restype = None
    lib.llama_radar_strerror.argtypes = [ctypes.c_int32]
    lib.llama_radar_strerror.restype = ctypes.c_char_p
    # void llama_radar_memory_totals(const struct llama_context * ctx, uint64_t out[6])
    lib.llama_radar_memory_totals.argtypes = [ctx_p, ctypes.POINTER(ctypes.c_uint64)]
    lib.llama_radar_memory_totals.restype = None
    return llama_cpp


def bundled_program(name: str, env: str) -> tuple[Optional[str], list]:
    """A llama.cpp program built into the package: ``$env`` if set, else next to ``$LLAMA_CPP_LIB_PATH``'s
    libraries (a development build), else ``llama_cpp/bin/NAME``. Returns (the first executable one or
    None, every place looked at)."""
    import importlib.util

    explicit = os.environ.get(env)
    cands: list = []
    if explicit:
        cands.append(explicit)
    else:
        if os.environ.get("LLAMA_CPP_LIB_PATH"):
            cands.append(os.path.join(os.environ["LLAMA_CPP_LIB_PATH"], name))
        spec = importlib.util.find_spec("llama_cpp")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            cands.append(os.path.join(loc, "bin", name))
    found = next((c for c in cands if os.path.isfile(c) and os.access(c, os.X_OK)), None)
    return found, cands


def build_info() -> str:
    """The library's build string, e.g. ``radar_gguf 0.1.0; llama-cpp-python 0.3.36; ggml 0.25.3``."""
    return bindings().llama_cpp._lib.llama_radar_build_info().decode()


def _lib() -> Any:
    return bindings().llama_cpp._lib


def radar_defaults() -> RadarConfig:
    """The library's default parameters, as a RadarConfig."""
    p = _lib().llama_radar_default_params()
    return _from_c(p)


def _f32(x: float) -> float:
    """A C float as the decimal it was set from (0.99f reads back 0.9900000095...; 7 digits hold an f32)."""
    return float(f"{x:.7g}")


def _from_c(p: llama_radar_params) -> RadarConfig:
    from .config import SCORES

    return RadarConfig(
        enabled=bool(p.enabled),
        score=SCORES[p.score],
        n_feat=p.n_feat,
        top_k=p.top_k,
        token_budget=p.token_budget,
        n_sink=p.n_sink,
        n_recent=p.n_recent,
        aspect=_f32(p.aspect),
        seg_len_min=p.seg_len_min,
        dense_below=p.dense_below,
        seed=p.seed,
        shared_gqa=bool(p.shared_gqa),
        summary_type={v: k for k, v in SUMMARY_TYPES.items()}[p.summary_type],
        budget_max_scale=_f32(p.budget_max_scale),
        rescore=_f32(p.rescore),
        mass_target=_f32(p.mass_target),
        rescore_max=_f32(p.rescore_max),
        rescore_mass=_f32(p.rescore_mass),
    )


def _to_c(cfg: RadarConfig) -> llama_radar_params:
    return llama_radar_params(
        cfg.enabled,
        cfg.score_id,
        cfg.n_feat,
        cfg.top_k,
        cfg.token_budget,
        cfg.n_sink,
        cfg.n_recent,
        float(cfg.aspect),
        cfg.seg_len_min,
        cfg.dense_below,
        cfg.seed,
        cfg.shared_gqa,
        SUMMARY_TYPES[cfg.summary_type],
        float(cfg.budget_max_scale),
        float(cfg.rescore),
        float(cfg.mass_target),
        float(cfg.rescore_max),
        float(cfg.rescore_mass),
    )


def radar_set(ctx: Any, cfg: RadarConfig) -> None:
    """Apply ``cfg`` to a llama_context; raises ValueError (bad parameter) or RuntimeError (unsupported)."""
    cfg.validate()
    lib = _lib()
    rc = lib.llama_radar_set_params(ctx, ctypes.byref(_to_c(cfg)))
    if rc != 0:
        msg = lib.llama_radar_strerror(rc).decode()
        if -20 < rc < 0:  # LLAMA_RADAR_ERR_SCORE ... _BUDGET_SCALE: one parameter out of range
            raise ValueError(f"Radar parameter rejected by the library: {msg}")
        if rc in (-20, -25):  # LLAMA_RADAR_ERR_UNSUPPORTED, LLAMA_RADAR_ERR_BACKEND
            raise RadarUnavailable(f"Radar is not available for this context: {msg}")
        raise RuntimeError(f"Radar cannot be enabled: {msg}")


def radar_get(ctx: Any) -> RadarConfig:
    p = llama_radar_params()
    rc = _lib().llama_radar_get_params(ctx, ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(_lib().llama_radar_strerror(rc).decode())
    return _from_c(p)


def radar_stats(ctx: Any) -> RadarStats:
    s = llama_radar_stats()
    if _lib().llama_radar_get_stats(ctx, ctypes.byref(s)) != 0:
        return RadarStats()
    return RadarStats(**{name: getattr(s, name) for name in RadarStats.field_names()})


def radar_reset_stats(ctx: Any) -> None:
    _lib().llama_radar_reset_stats(ctx)


def memory_totals(ctx: Any) -> tuple[int, int, int, int, int, int]:
    """llama.cpp's memory accounting of a context, in bytes: host model, context, compute, then the
    same three on devices (GPU). For a model loaded with ``no_alloc`` it is what they would take."""
    out = (ctypes.c_uint64 * 6)()
    _lib().llama_radar_memory_totals(ctx, out)
    return tuple(int(v) for v in out)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _ggml() -> Any:
    """libggml (the backend registry), next to the libllama that got loaded (already mapped by it)."""
    name = bindings().llama_cpp._lib._name
    folder, base = os.path.split(name)
    for candidate in (base.replace("llama", "ggml", 1), "libggml.so", "libggml.dylib", "ggml.dll"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            lib = ctypes.CDLL(path)
            break
    else:  # pragma: no cover - every build ships it next to libllama
        return None
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_register.restype = None
    return lib


GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU = 1, 2


def _is_rpc(lib: Any, dev: int) -> bool:
    return lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) == b"RPC"


def offload_devices(endpoints: tuple) -> Optional[Any]:
    """The NULL-terminated device list (``llama_model_params.devices``) of a model that offloads to the RPC
    workers ``endpoints`` (in that order) and the local GPUs, as llama.cpp would choose by default; None
    while no worker was added to the process (llama.cpp's default then picks the same devices).

    Needed because workers added once stay in ggml's registry: llama.cpp's default would spread every later
    model over them too, and query them while loading (a lost one would abort the process)."""
    lib = _ggml()
    if lib is None:
        return None
    rpc_devs: dict = {}
    gpus, igpus = [], []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if _is_rpc(lib, dev):
            rpc_devs.setdefault(lib.ggml_backend_dev_description(dev).decode(), []).append(dev)
        elif lib.ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU:
            gpus.append(dev)
        elif lib.ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_IGPU:
            igpus.append(dev)
    if not rpc_devs:
        return None
    devs = [d for ep in endpoints for d in rpc_devs.get(ep, [])] + (gpus or igpus)
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None)


@lru_cache(maxsize=1)
def ggml_rpc() -> Any:
    """ggml's RPC client, through the backend registry: ``add_server(endpoint) -> reg``, ``register(reg)``,
    ``remote_type(dev)`` (the kind of device behind an RPC device), ``take_error(buf, size)`` (why a worker
    was lost, since the last call). RuntimeError if the build has no RPC."""
    g = _ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC") if g is not None else None
    if not reg:
        raise RuntimeError(
            "radar_gguf: this build has no RPC backend (it was built with -DRADAR_RPC=OFF); reinstall with `pip install .`"
        )
    get = g.ggml_backend_reg_get_proc_address
    add, remote = get(reg, b"ggml_backend_rpc_add_server"), get(reg, b"ggml_backend_rpc_dev_remote_type")
    take = get(reg, b"ggml_backend_rpc_take_error")
    if not add or not remote or not take:
        raise LibraryError(
            "radar_gguf: the RPC backend of this build lacks radar_gguf's functions; reinstall"
        )
    return types.SimpleNamespace(
        add_server=ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add),
        remote_type=ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(remote),
        take_error=ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)(take),
        register=g.ggml_backend_register,
    )


def device_memory() -> Optional[tuple[int, int]]:
    """(free, total) bytes summed over the GPU devices ggml sees; None when there is none."""
    lib = _ggml()
    if lib is None:
        return None
    free_sum = total_sum = n = 0
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if _is_rpc(lib, dev):  # a worker's memory is its own (and asking a lost one would abort)
            continue
        if lib.ggml_backend_dev_type(dev) not in (
            GGML_BACKEND_DEVICE_TYPE_GPU,
            GGML_BACKEND_DEVICE_TYPE_IGPU,
        ):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        free_sum, total_sum, n = free_sum + free.value, total_sum + total.value, n + 1
    return (free_sum, total_sum) if n else None
