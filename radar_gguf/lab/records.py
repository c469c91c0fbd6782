"""What the eval commands share: Radar config specs, result records (JSON lists), plots and logging.

A record is one measured value: ``{"model", "context", "metric", "mode", "value", "params", "device",
"command", ...}``; files of records are merged by a key (a rerun replaces its own records only).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from ..args import gpu_layers_int, positive_int
from ..config import RadarConfig
from ..sizes import argparse_size

DENSE = RadarConfig(enabled=False)
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def radar_off_note(model: Any, cfg: RadarConfig, n_decode_radar: int) -> str:
    """A note for a Radar config that never ran (every step below ``dense_below``), so a result equal to
    dense is not read as Radar's; empty when Radar ran or the config is dense."""
    if not cfg.enabled or n_decode_radar:
        return ""
    from .. import _lib

    below = _lib.radar_get(model.llama.ctx).dense_below
    return (
        f" [Radar off: below dense_below={below} on this device; add dense_below=N to the spec to measure it]"
    )


def parse_config(spec: str, base: Optional[RadarConfig] = None) -> RadarConfig:
    """``dense`` or ``SCORE[:key=value,...]`` -> RadarConfig (fields changed from ``base``/defaults)."""
    return RadarConfig.from_spec(spec, base)


def split_specs(text: str) -> list[str]:
    """Split a comma list of specs where a spec's own ``key=value`` items also use commas:
    ``dense,rf:top_k=64,n_recent=1024,mean`` -> ``[dense, rf:top_k=64,n_recent=1024, mean]``."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and out and out[-1] != "dense":
            out[-1] += ("," if ":" in out[-1] else ":") + part
        else:
            out.append(part)
    return out


def config_specs(text: str, parser: argparse.ArgumentParser, flag: str = "--configs") -> list[str]:
    """The specs of a comma list (``split_specs``), each checked (``parse_config``); a bad one is a usage error."""
    specs = split_specs(text)
    try:
        for s in specs:
            parse_config(s)
    except ValueError as e:
        parser.error(f"{flag}: {e}")
    return specs


def merge_records(path: Path, new: Sequence[dict], key: Sequence[str]) -> list[dict]:
    """Write ``new`` into the JSON list at ``path``, replacing records with the same ``key`` fields."""
    old = json.loads(path.read_text()) if path.exists() else []
    ids = {tuple(json.dumps(r.get(k), sort_keys=True) for k in key) for r in new}
    kept = [r for r in old if tuple(json.dumps(r.get(k), sort_keys=True) for k in key) not in ids]
    allr = kept + list(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(allr, indent=1) + "\n")
    return allr


def params_of(cfg: RadarConfig) -> dict:
    """The config as stored in a record (dense: only ``enabled``)."""
    return asdict(cfg) if cfg.enabled else {"enabled": False}


def device_name() -> str:
    from ..bench import device_name as dn

    return dn()


def sizes(text: str, parser: argparse.ArgumentParser, flag: str) -> list[int]:
    """A comma list of sizes (``8k,16k``), sorted; a bad one is a usage error naming ``flag``."""
    try:
        return sorted(argparse_size(s) for s in text.split(",") if s.strip())
    except argparse.ArgumentTypeError as e:
        parser.error(f"{flag}: {e}")
        raise


def pyplot() -> Optional[Any]:
    """matplotlib's pyplot on the Agg backend, or None (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("# matplotlib not installed: no plot (pip install matplotlib)")
        return None
    return plt


def add_model_args(sp: argparse.ArgumentParser) -> None:
    """MODEL, --threads, --gpu-layers, --device: the flags every eval command that loads a model takes."""
    sp.add_argument(
        "model", nargs="?", default=None, help="GGUF path or hub spec (default: the bundled model)"
    )
    sp.add_argument("--threads", "-t", type=positive_int, default=None)
    sp.add_argument("--gpu-layers", "-ngl", type=gpu_layers_int, default=0)
    sp.add_argument(
        "--device", default=None, help="device description for the records (default: detected CPU)"
    )
