"""Command-line flags shared by run, serve, summarize, bench and eval: the model, its context and Radar."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Optional

from .config import SCORES, SUMMARY_TYPES, RadarConfig
from .sizes import argparse_size, parse_size

DEFAULT_CTX = "8k"
MAX_CTX = (1 << 31) - 1  # engine.MAX_CTX (not imported: the engine pulls in llama_cpp)
MAX_SEED = (1 << 32) - 1

# -- validating argparse types: a bad value is a usage error naming the flag (exit 2), no traceback --


def int_range(lo: Optional[int] = None, hi: Optional[int] = None, what: str = "an integer") -> Callable:
    """An ``argparse`` type: an integer in [lo, hi] (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {v}")
        return v

    parse.__name__ = what
    return parse


def float_range(
    lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False, what: str = "a number"
) -> Callable:
    """An ``argparse`` type: a finite number in [lo, hi], or (lo, hi] with ``lo_open``."""

    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if lo_open else 'at least'} {lo:g}, got {v:g}"
            )
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:g}, got {v:g}")
        return v

    parse.__name__ = what
    return parse


positive_int = int_range(1, what="a positive integer")  # --threads, -n, --rounds
nonneg_int = int_range(0, what="a non-negative integer")
gpu_layers_int = int_range(-1, what="a number of layers (-1: all)")
seed_int = int_range(-1, MAX_SEED, what="a seed (-1: random)")
temperature_float = float_range(0.0, what="a temperature (0: greedy)")
top_p_float = float_range(0.0, 1.0, lo_open=True, what="a probability")
_rescore_range = float_range(0.0, 64.0, what="a rescore factor (0: one stage)")
share_float = float_range(0.0, 1.0, what="a share in [0, 1]")
seconds_float = float_range(0.0, what="seconds (0: no limit)")


def rescore_float(text: str) -> float:
    """``argparse`` type of --radar-rescore: 0 (one stage) or a factor in [1, 64]."""
    v = _rescore_range(text)
    if 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be 0 (one stage) or in [1, 64], got {v:g}")
    return v


def ctx_size(text: str) -> int:
    """``argparse`` type of --ctx: a size (64k, 32768) that llama.cpp can hold (at most 2^31-1 tokens)."""
    n = argparse_size(text)
    if n > MAX_CTX:
        raise argparse.ArgumentTypeError(f"{text!r} is {n} tokens; at most {MAX_CTX}")
    return n


def dense_below_size(text: str) -> int:
    """``argparse`` type of --radar-dense-below: -1 (by device), 0 (always Radar) or a size (4k)."""
    if text.strip() in ("-1", "0"):
        return int(text)
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; or -1 (by device), 0 (Radar from the start)") from None


def add_sampling_args(parser: argparse.ArgumentParser, *, top_p: bool = True) -> None:
    """--temp, --top-p (unless ``top_p=False``) and --seed, validated (a bad value is a usage error)."""
    parser.add_argument(
        "--temp",
        type=temperature_float,
        default=0.0,
        help="sampling temperature, >= 0; 0 is greedy (default: %(default)s)",
    )
    if top_p:
        parser.add_argument(
            "--top-p",
            type=top_p_float,
            default=0.95,
            help="nucleus sampling, in (0, 1] (default: %(default)s)",
        )
    parser.add_argument(
        "--seed", type=seed_int, default=0, help="sampling seed; -1: random (default: %(default)s)"
    )


def add_radar_args(parser: argparse.ArgumentParser) -> None:
    """Radar flags shared by run, summarize, bench and eval."""
    d = RadarConfig()
    g = parser.add_argument_group("Radar")
    g.add_argument(
        "--radar", dest="radar", action="store_true", default=True, help="use Radar at decode (default)"
    )
    g.add_argument("--no-radar", dest="radar", action="store_false", help="dense attention only")
    g.add_argument(
        "--radar-score", choices=SCORES, default=d.score, help="segment score (default: %(default)s)"
    )
    g.add_argument(
        "--radar-budget",
        type=int,
        default=d.token_budget,
        help="tokens selected per step (default: %(default)s)",
    )
    g.add_argument(
        "--radar-top-k", type=int, default=d.top_k, help="segments per step; overrides --radar-budget"
    )
    g.add_argument(
        "--radar-window",
        type=int,
        default=d.n_recent,
        help="recent tokens always attended (default: %(default)s)",
    )
    g.add_argument(
        "--radar-sinks",
        type=int,
        default=d.n_sink,
        help="leading tokens always attended (default: %(default)s)",
    )
    g.add_argument(
        "--radar-aspect",
        type=float,
        default=d.aspect,
        help="segment length sqrt(t)/aspect (default: %(default)s)",
    )
    g.add_argument(
        "--radar-features", type=int, default=d.n_feat, help="random features for --radar-score rf"
    )
    g.add_argument(
        "--radar-dense-below",
        type=dense_below_size,
        default=d.dense_below,
        help="stay dense below this many tokens (default: -1 = by device, 12k on the CPU, 64k on a GPU)",
    )
    g.add_argument("--radar-shared-gqa", action="store_true", help="one selection per KV head")
    g.add_argument(
        "--radar-rescore",
        type=rescore_float,
        default=d.rescore,
        help="two-stage selection: rescore this many times the budget exactly from the keys, keep the best; "
        "0: one stage (default: %(default)s)",
    )
    g.add_argument(
        "--radar-mass-target",
        type=share_float,
        default=None,
        help="adaptive budget of the two stages: attend more rescored candidates until the attended cells "
        f"hold this share of the known attention mass; 0: the fixed budget (default: {d.mass_target:g})",
    )
    g.add_argument(
        "--radar-rescore-mass",
        type=share_float,
        default=d.rescore_mass,
        help="adaptive candidate count of the two stages: each head rescores its best segments until their "
        "estimated share of the attention mass reaches this, up to --radar-rescore-max times the budget; "
        "CPU only; 0: --radar-rescore times the budget (default: %(default)s)",
    )
    g.add_argument(
        "--radar-rescore-max",
        type=rescore_float,
        default=None,
        help="the most candidates --radar-rescore-mass may rescore, times the budget (default: 16 with it)",
    )
    g.add_argument(
        "--radar-summary-type",
        choices=sorted(SUMMARY_TYPES),
        default=d.summary_type,
        help="storage of the segment summaries; f16 halves the bytes scored per step (default: %(default)s)",
    )


def radar_from_args(args: argparse.Namespace) -> RadarConfig:
    if args.radar_mass_target and args.radar_rescore <= 1:
        raise ValueError(
            "--radar-mass-target needs two stages: the mass comes from stage two (--radar-rescore > 1)"
        )
    return RadarConfig(
        enabled=args.radar,
        score=args.radar_score,
        token_budget=args.radar_budget,
        top_k=args.radar_top_k,
        n_recent=args.radar_window,
        n_sink=args.radar_sinks,
        aspect=args.radar_aspect,
        n_feat=args.radar_features,
        dense_below=args.radar_dense_below,
        shared_gqa=args.radar_shared_gqa,
        summary_type=args.radar_summary_type,
        rescore=args.radar_rescore,
        mass_target=RadarConfig.mass_target if args.radar_mass_target is None else args.radar_mass_target,
        rescore_mass=args.radar_rescore_mass,
        rescore_max=(16.0 if args.radar_rescore_mass > 0 else 0.0)
        if args.radar_rescore_max is None
        else args.radar_rescore_max,
    ).validate()


def add_model_args(
    parser: argparse.ArgumentParser, ctx_default: str = DEFAULT_CTX, positional: bool = True
) -> None:
    """MODEL (positional, or ``-m/--model`` with ``positional=False``), --ctx, --gpu-layers, --threads, --verbose."""
    model_help = "a .gguf file, a Hugging Face spec (user/repo:Q4_K_M), or nothing for the bundled model"
    if positional:
        parser.add_argument("model", nargs="?", default=None, help=model_help)
    else:
        parser.add_argument("-m", "--model", default=None, help=model_help)
    parser.add_argument(
        "--ctx",
        type=ctx_size,
        default=ctx_size(ctx_default),
        help="context length, e.g. 32768, 64k, 1m (default: %(default)s)",
    )
    add_device_args(parser)
    parser.add_argument(
        "--threads", "-t", type=positive_int, default=None, help="CPU threads (default: all cores)"
    )
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--gpu-layers, --rpc, --rpc-timeout, --tensor-split, --split-mode: where the layers run."""
    parser.add_argument(
        "--gpu-layers",
        "-ngl",
        type=gpu_layers_int,
        default=None,
        help="layers to offload to GPUs and RPC workers (-1: all; default: 0, or all with --rpc)",
    )
    parser.add_argument(
        "--rpc",
        type=rpc_endpoints,
        default=None,
        metavar="HOST:PORT,...",
        help="RPC workers to spread the offloaded layers over (started with `radar-gguf rpc-server`)",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=seconds_float,
        default=None,
        metavar="SECONDS",
        help="a worker that does not answer within this many seconds is lost, like one that closed its "
        "connection (0: wait forever; default: $GGML_RPC_TIMEOUT, else 300)",
    )
    parser.add_argument(
        "--tensor-split",
        "-ts",
        type=tensor_split,
        default=None,
        metavar="N,N,...",
        help="share of the offloaded layers per device, RPC workers first (default: by free memory)",
    )
    parser.add_argument(
        "--split-mode",
        "-sm",
        choices=("none", "layer", "row"),
        default="layer",
        help="split the model by layer over the devices, by row over GPUs, or none (default: %(default)s)",
    )


def rpc_endpoints(text: str) -> list:
    """An ``argparse`` type: ``host:port,host:port``."""
    from .rpc import parse_endpoints

    try:
        return parse_endpoints(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def tensor_split(text: str) -> list:
    """An ``argparse`` type: comma-separated non-negative shares, e.g. ``3,1``."""
    try:
        shares = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in shares) or not any(shares) or len(shares) > 16:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 non-negative shares, not all zero, got {text!r}")
    return shares


def split_passthrough(argv: Optional[list]) -> tuple[list, list]:
    """``argv`` (default: ``sys.argv[1:]``) cut at ``--``: our flags, and those handed on to a llama.cpp program."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def parse_args_and_radar(parser: argparse.ArgumentParser, argv: Optional[list]) -> tuple:
    """Parse ``argv``; a Radar flag out of range is a usage error naming the parameter (exit 2)."""
    args = parser.parse_args(argv)
    try:
        return args, radar_from_args(args)
    except ValueError as e:
        parser.error(str(e))


def device_kwargs(args: argparse.Namespace) -> dict:
    """The ``load()`` arguments of :func:`add_device_args`' flags (and --threads): where the layers run."""
    return dict(
        gpu_layers=args.gpu_layers,
        threads=args.threads,
        rpc=args.rpc,
        rpc_timeout=args.rpc_timeout,
        tensor_split=args.tensor_split,
        split_mode=args.split_mode,
    )


def load_from_args(args: argparse.Namespace, radar: Optional[RadarConfig] = None):
    """Load the model the shared flags name; on a bad model file, print the error and return None."""
    from .engine import load
    from .hub import HubError

    try:
        return load(
            args.model,
            ctx=args.ctx,
            radar=radar or radar_from_args(args),
            seed=getattr(args, "seed", 0),
            verbose=args.verbose,
            **device_kwargs(args),
        )
    except (HubError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
