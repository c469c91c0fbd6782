"""Command-line flags shared by run, serve, summarize, bench and eval: the model, its context and Radar."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .config import SCORES, SUMMARY_TYPES, RadarConfig
from .sizes import argparse_size

DEFAULT_CTX = "8k"


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
        type=argparse_size,
        default=d.dense_below,
        help="stay dense below this many tokens (default: -1 = by device, 4k on the CPU, 16k on a GPU)",
    )
    g.add_argument("--radar-shared-gqa", action="store_true", help="one selection per KV head")
    g.add_argument(
        "--radar-summary-type",
        choices=sorted(SUMMARY_TYPES),
        default=d.summary_type,
        help="storage of the segment summaries; f16 halves the bytes scored per step (default: %(default)s)",
    )


def radar_from_args(args: argparse.Namespace) -> RadarConfig:
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
        type=argparse_size,
        default=argparse_size(ctx_default),
        help="context length, e.g. 32768, 64k, 1m (default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-layers", "-ngl", type=int, default=0, help="layers to offload to the GPU (-1: all)"
    )
    parser.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def parse_args_and_radar(parser: argparse.ArgumentParser, argv: Optional[list]) -> tuple:
    """Parse ``argv``; a Radar flag out of range is a usage error naming the parameter (exit 2)."""
    args = parser.parse_args(argv)
    try:
        return args, radar_from_args(args)
    except ValueError as e:
        parser.error(str(e))


def load_from_args(args: argparse.Namespace, radar: Optional[RadarConfig] = None):
    """Load the model the shared flags name; on a bad model file, print the error and return None."""
    from .engine import load
    from .hub import HubError

    try:
        return load(
            args.model,
            ctx=args.ctx,
            radar=radar or radar_from_args(args),
            gpu_layers=args.gpu_layers,
            threads=args.threads,
            seed=getattr(args, "seed", 0),
            verbose=args.verbose,
        )
    except (HubError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
