"""Decode speed, Radar vs dense, at several context depths in one run:
``python -m radar_gguf.bench [MODEL] --depths 1k,4k,8k,16k``.

One context is filled once with the essay corpus up to each depth in turn; at each depth both
modes decode the same next tokens (teacher-forced, so the work is identical), after one untimed
warm-up step. Records go to a JSON list (``--out``), a table to stdout. ``--busy N`` times the decode
on a shared machine: N other processes spin on the CPU while the timed rounds run. ``--vs SPEC`` times
other Radar configs in the same run, on the same filled context (``--vs meanvar:shared_gqa=1,rescore=16``):
filling a long context is most of a CPU run, and side by side in one run is the only fair comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .args import (
    add_device_args,
    add_radar_args,
    device_kwargs,
    int_range,
    parse_args_and_radar,
    positive_int,
)
from .config import RadarConfig
from .engine import prefill_bar
from .sizes import argparse_size, format_size

DEFAULT_DEPTHS = "1k,4k,8k,16k"


def device_name() -> str:
    """CPU model and core count (or the GPU when offloading), for the record."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radar-gguf bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "model", nargs="?", default=None, help="GGUF path or hub spec (default: the bundled model)"
    )
    p.add_argument(
        "--depths", default=DEFAULT_DEPTHS, help="context depths, comma separated (default: %(default)s)"
    )
    p.add_argument(
        "-n", "--n-gen", type=positive_int, default=32, help="timed decode steps per depth, mode and round"
    )
    p.add_argument(
        "--rounds", type=positive_int, default=2, help="alternating rounds per depth; the best counts"
    )
    p.add_argument("--threads", "-t", type=positive_int, default=None)
    p.add_argument(
        "--busy",
        type=int_range(0, 256, what="a process count"),
        default=0,
        help="other processes that keep the CPU busy while the timed rounds run, as on a shared machine "
        "(the fill runs without them; default: 0)",
    )
    add_device_args(p)
    p.add_argument("--out", type=Path, default=None, help="append records to this JSON file")
    p.add_argument(
        "--device", default=None, help="device description for the records (default: detected CPU)"
    )
    p.add_argument(
        "--vs",
        action="append",
        default=[],
        metavar="SPEC",
        help="another Radar config timed in the same run, as the flags' config with changes: "
        "SCORE[:key=value,...] with RadarConfig's field names, e.g. meanvar:shared_gqa=1,rescore=16 "
        "(repeat for several)",
    )
    add_radar_args(p)
    return p


@contextmanager
def busy_cpu(n: int) -> Iterator[None]:
    """``n`` other processes spinning on the CPU for the duration (separate interpreters, so the model's
    memory and threads are not forked)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for pr in procs:
            pr.kill()
        for pr in procs:
            pr.wait()


def _decode_rate(model, tokens: list[int], depth: int, n_gen: int) -> float:
    """tokens/s of ``n_gen`` single-token decode steps after ``depth`` tokens (one untimed warm-up)."""
    model.prefill(tokens[:depth])  # back to exactly `depth` tokens (drops earlier steps)
    nxt = tokens[depth : depth + n_gen + 1]
    model.llama.eval(nxt[:1])  # warm-up: graph build, first summaries
    t = time.perf_counter()
    for tok in nxt[1:]:
        model.llama.eval([tok])
    return n_gen / (time.perf_counter() - t)


def bench(
    model,
    tokens: list[int],
    depths: list[int],
    n_gen: int,
    radar: RadarConfig,
    *,
    rounds: int = 2,
    busy: int = 0,
    others: Optional[dict[str, RadarConfig]] = None,
    log=print,
    progress: bool = True,
) -> list[dict]:
    """Decode tokens/s of dense and Radar at each depth on one loaded ``model``.

    The context is filled densely (a tqdm bar on stderr while it fills, unless ``progress`` is False).
    The modes alternate for ``rounds`` rounds and each keeps its best round, so a burst of other
    load on the machine does not decide the ratio; ``busy`` other processes spin on the CPU meanwhile.
    ``others`` (name -> config) are more Radar modes timed the same way, each record with its own params.
    """
    records = []
    dense = RadarConfig(enabled=False)
    modes = {"dense": dense, "radar": radar, **(others or {})}
    for depth in depths:
        t0 = time.perf_counter()
        model.set_radar(dense)
        with prefill_bar(f"fill {format_size(depth)}", disable=not progress) as bar:
            model.prefill(tokens[:depth], progress=bar, piece=2048)
        log(f"# depth {format_size(depth)}: filled in {time.perf_counter() - t0:.0f} s")
        best = dict.fromkeys(modes, 0.0)
        seen = {m: (depth + n_gen, None, False) for m in modes}  # attended, segment length, Radar ran
        with busy_cpu(busy):
            for _ in range(rounds):
                for mode, cfg in modes.items():
                    model.set_radar(cfg)
                    best[mode] = max(best[mode], _decode_rate(model, tokens, depth, n_gen))
                    st = model.radar_stats()
                    if cfg.enabled and st.n_decode_radar:
                        seen[mode] = (st.n_attended, st.seg_len, True)
        for mode, cfg in modes.items():
            attended, seg_len, ran = seen[mode]
            rec = {
                "mode": mode,
                "depth": depth,
                "tokens_per_s": round(best[mode], 3),
                "n_gen": n_gen,
                "rounds": rounds,
                "busy_processes": busy,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "attended": attended,
                "seg_len": seg_len,
                "radar_ran": ran,
                "radar_params": cfg.__dict__ if cfg.enabled else {"enabled": False},
            }
            records.append(rec)
            log(f"  {mode:5s} {rec['tokens_per_s']:8.2f} tok/s  ({_attended_note(rec, cfg, model)})")
    return records


def _attended_note(rec: dict, radar: RadarConfig, model) -> str:
    """What a mode read per step: all cells, Radar's budget (a floor under a mass target, which attends
    more where attention is spread), or nothing sparse at all below ``dense_below``."""
    if rec["mode"] == "dense":
        return f"attends all {rec['attended']} cells"
    if not rec["radar_ran"]:
        return f"Radar off below dense_below={model.radar.dense_below}: dense"
    if radar.mass_target > 0:
        return f"attends >= {rec['attended']} cells: the budget, more where the mass target needs them"
    return f"attends ~{rec['attended']} cells"


def main(argv: Optional[list] = None) -> int:
    args, radar = parse_args_and_radar(setup_arg_parser(), argv)
    try:
        depths = sorted(argparse_size(d) for d in args.depths.split(","))
    except argparse.ArgumentTypeError as e:
        setup_arg_parser().error(f"--depths: {e}")
    others = {}
    for spec in args.vs:
        try:
            others[spec] = RadarConfig.from_spec(spec, base=radar)
        except ValueError as e:
            setup_arg_parser().error(f"--vs: {e}")
        if not others[spec].enabled:
            setup_arg_parser().error(f"--vs {spec}: dense is always timed; name a Radar config")
    from .engine import load
    from .lab.corpus import essay_tokens

    n_ctx = depths[-1] + args.n_gen + 64
    try:
        model = load(args.model, ctx=n_ctx, radar=radar, **device_kwargs(args))
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with model:
        tokens = essay_tokens(model, depths[-1] + args.n_gen + 1)
        command = "python -m radar_gguf.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        print(f"# {model.path.name} on {args.device or device_name()}; {radar.describe()}")
        if args.busy:
            print(f"# timed rounds with {args.busy} other busy processes on the CPU")
        recs = bench(
            model, tokens, depths, args.n_gen, radar, rounds=args.rounds, busy=args.busy, others=others
        )
    device = args.device or device_name()
    for r in recs:
        r.update(model=model.path.name, device=device, command=command.strip())
    names = ["radar", *others]
    print("\n| depth | dense tok/s | " + " | ".join(f"{n} tok/s | / dense" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for d in depths:
        rate = {r["mode"]: r["tokens_per_s"] for r in recs if r["depth"] == d}
        cells = " | ".join(f"{rate[n]:.2f} | {rate[n] / rate['dense']:.2f}x" for n in names)
        print(f"| {format_size(d)} | {rate['dense']:.2f} | {cells} |")
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(old + recs, indent=1) + "\n")
        print(f"records appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
