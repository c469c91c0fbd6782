#!/usr/bin/env python3
"""Collect llama-bench JSON pairs (dense, radar) into records, a markdown table and a log-log plot.

    python scripts/bench_cuda_report.py docs/results/cuda --out docs/results/bench-cuda.json \
        --plot docs/results/cuda/bench-cuda.png

Reads every `bench-<tag>-dense.json` / `bench-<tag>-radar.json` pair written by
`scripts/device_cuda.sh bench` (one llama-bench run per mode, same build, same machine start) and
writes one record per (model, depth, mode, kv_type): model, depth, mode, kv_type, tokens_per_s,
stddev, gpus, device, command. The table gives radar/dense per depth and radar's share of its own
depth-0 speed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# runs whose Radar setting was not the library default (LLAMA_RADAR=1)
SPECS = {"2gpu-llama-1b-f16-d8k": "dense_below=4096"}
COMMAND = (
    "LLAMA_RADAR={radar} llama-bench -m {model} -fa 1 -ngl 99 -p 0 -n {n_gen} -d {depths} -r {reps} -ctk {kv} -ctv {kv}"
    "{sm}  (scripts/device_cuda.sh bench)"
)


def load_pair(dense: Path) -> list[dict]:
    tag = dense.name[len("bench-") : -len("-dense.json")]
    radar = dense.with_name(f"bench-{tag}-radar.json")
    if not radar.exists():
        return []
    recs = []
    for mode, path in (("dense", dense), ("radar", radar)):
        rows = json.loads(path.read_text())
        depths = ",".join(str(r["n_depth"]) for r in rows)
        for r in rows:
            gpus = 2 if tag.startswith("2gpu") else 1
            recs.append(
                {
                    "model": Path(r["model_filename"]).stem.replace("-q4_k_m", "")
                    + " (random weights, Q4_K_M)",
                    "tag": tag,
                    "depth": r["n_depth"],
                    "mode": mode,
                    "kv_type": r["type_k"],
                    "tokens_per_s": round(r["avg_ts"], 2),
                    "stddev": round(r["stddev_ts"], 2),
                    "gpus": gpus,
                    "device": r["gpu_info"].split(",")[0],
                    "time": r["test_time"],
                    "command": COMMAND.format(
                        radar=SPECS.get(tag, "1") if mode == "radar" else "0",
                        model=Path(r["model_filename"]).name,
                        depths=depths,
                        n_gen=r["n_gen"],
                        reps=len(r["samples_ts"]),
                        kv=r["type_k"],
                        sm=" -sm layer (2 GPUs)" if gpus == 2 else "",
                    ),
                }
            )
    return recs


def table(recs: list[dict]) -> str:
    out = []
    for tag in dict.fromkeys(r["tag"] for r in recs):
        rows = [r for r in recs if r["tag"] == tag]
        d = {(r["depth"], r["mode"]): r["tokens_per_s"] for r in rows}
        r0 = rows[0]
        out.append(f"\n{r0['model']}, KV {r0['kv_type']}, {r0['gpus']}x {r0['device']}:\n")
        out.append("| depth | dense tok/s | radar tok/s | radar / dense | radar / its depth-0 speed |")
        out.append("|---|---|---|---|---|")
        base = d.get((0, "radar"))
        for depth in sorted({r["depth"] for r in rows}):
            dn, rd = d.get((depth, "dense")), d.get((depth, "radar"))
            if dn is None or rd is None:
                continue
            share = f"{rd / base:.0%}" if base else "-"
            label = f"{depth // 1024}k" if depth else "0"
            out.append(f"| {label} | {dn:.1f} | {rd:.1f} | {rd / dn:.2f}x | {share} |")
    return "\n".join(out)


def plot(recs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for tag in dict.fromkeys(r["tag"] for r in recs):
        for mode, style in (("dense", "--"), ("radar", "-")):
            rows = sorted(
                (r for r in recs if r["tag"] == tag and r["mode"] == mode and r["depth"] > 0),
                key=lambda r: r["depth"],
            )
            if rows:
                ax.plot(
                    [r["depth"] for r in rows],
                    [r["tokens_per_s"] for r in rows],
                    style,
                    marker="o",
                    label=f"{tag} {mode}",
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context depth (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("Radar vs dense flash attention, batch-1 decode, H100")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    recs = [r for f in sorted(args.dir.glob("bench-*-dense.json")) for r in load_pair(f)]
    args.out.write_text(json.dumps(recs, indent=1) + "\n")
    print(table(recs))
    if args.plot:
        plot(recs, args.plot)


if __name__ == "__main__":
    main()
