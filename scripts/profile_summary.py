#!/usr/bin/env python3
"""Where a decode step's time goes: summarize a CUPTI activity trace of llama-bench decode runs.

python scripts/profile_summary.py TRACE --depths 1024,65536,131072 [--layers 32] [--skip 4] [--out PREFIX]

TRACE is the file the tracer of `scripts/device_cuda.sh trace` writes (lines N/K/M/S/R: kernel names,
kernels, memcpys, memsets, runtime API calls; ns timestamps on one clock). A step is the span between
two consecutive logits copies to the host (the most common device-to-host size of 64 KiB or more); a
step is a decode step when it runs a matrix-vector kernel and no batched matmul (`mul_mat_q`, cuBLAS).
Consecutive decode steps form a run; the runs of at least --skip + 2 steps are llama-bench's timed
generations, one per depth in the order given (a one-step warm-up run is dropped). The first --skip
steps of each run are left out (graph capture, Radar's bulk summarize). For each run it prints, per
step (medians over the steps kept): the wall time, the summed kernel time by kernel and by group, the
kernels, memcpys and memsets launched, the runtime API calls made by the host, and the gap (wall time
minus GPU busy time). --out PREFIX writes PREFIX.txt, PREFIX-steps.csv (one row per step) and
PREFIX.json (the figures of the table in docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict

GROUPS = [
    # (group, regex on the short kernel name), first match wins
    ("attention: radar", r"^radar_"),
    ("attention: flash_attn", r"flash_attn"),
    ("weights: matvec", r"^mul_mat_vec"),
    ("weights: q8_1 input quantize", r"^quantize_q8_1"),
    ("norm", r"norm"),
    ("rope", r"rope"),
    ("kv write (set_rows/cpy)", r"set_rows|^cpy|k_cpy|cpy_"),
    ("other", r"."),
]


def base(name: str) -> str:
    return re.split(r"[<(]", name, maxsplit=1)[0].strip()


def group(name: str) -> str:
    b = base(name)
    for g, rx in GROUPS:
        if re.search(rx, b):
            return g
    return "other"


def short(name: str) -> str:
    # keep type template arguments (q4_K vs q6_K) but shorten them
    s = re.sub(r"\(ggml_type\)", "t", name)
    s = re.sub(r"\s+", " ", s)
    return s if len(s) <= 70 else s[:67] + "..."


def read(path: str):
    names: dict[int, str] = {}
    kern, mcpy, mset, api = [], [], [], []
    with open(path) as f:
        for line in f:
            t = line[0]
            if t == "K":
                _, a, b, g, i = line.rstrip("\n").split(",")
                kern.append((int(a), int(b), int(g), int(i)))
            elif t == "R":
                _, a, b, n = line.rstrip("\n").split(",", 3)
                api.append((int(a), int(b), n))
            elif t == "M":
                _, a, b, k, n, g = line.rstrip("\n").split(",")
                mcpy.append((int(a), int(b), int(k), int(n), int(g)))
            elif t == "S":
                _, a, b, n, g = line.rstrip("\n").split(",")
                mset.append((int(a), int(b), int(n), int(g)))
            elif t == "N":
                _, i, n = line.rstrip("\n").split(",", 2)
                names[int(i)] = n
    for x in (kern, mcpy, mset, api):
        x.sort()
    return names, kern, mcpy, mset, api


def bucket(events, edges):
    """Events sorted by start, edges the step ends: per step, the events starting in (edges[i], edges[i + 1]]."""
    out = [[] for _ in range(len(edges) - 1)]
    j = 0
    for e in events:
        s = e[0]
        while j < len(edges) - 1 and s > edges[j + 1]:
            j += 1
        if j >= len(edges) - 1:
            break
        if s > edges[j]:
            out[j].append(e)
    return out


def med(xs):
    return statistics.median(xs) if xs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--depths", default="")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--skip", type=int, default=4)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    names, kern, mcpy, mset, api = read(a.trace)
    d2h = [m for m in mcpy if m[2] == 2 and m[3] >= 65536]
    if not d2h:
        sys.exit("profile_summary: no device-to-host copies of logits in the trace")
    size = Counter(m[3] for m in d2h).most_common(1)[0][0]
    edges = [m[1] for m in d2h if m[3] == size]
    kb, mb, sb, ab = bucket(kern, edges), bucket(mcpy, edges), bucket(mset, edges), bucket(api, edges)

    def is_decode(ks):
        bs = {base(names[k[3]]) for k in ks}
        return any(b.startswith("mul_mat_vec") for b in bs) and not any(
            b in ("mul_mat_q", "mul_mat_f") or "gemm" in b.lower() or "cutlass" in b.lower() for b in bs
        )

    runs, cur = [], []
    for i, ks in enumerate(kb):
        if ks and is_decode(ks):
            cur.append(i)
        else:
            if cur:
                runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    runs = [r for r in runs if len(r) >= a.skip + 2]
    depths = [d for d in a.depths.split(",") if d] or [f"run{i}" for i in range(len(runs))]
    if len(runs) != len(depths):
        print(
            f"profile_summary: {len(runs)} decode runs for {len(depths)} depths; labelling in order",
            file=sys.stderr,
        )

    lines, csv_rows, summary = [], [], {}
    p = lines.append
    p(
        f"# {a.label or a.trace}: per decode step, medians over the steps kept (first {a.skip} of each run left out)"
    )
    p(
        f"# logits copy {size} B; {len(kern)} kernels, {len(mcpy)} memcpys, {len(mset)} memsets, "
        f"{len(api)} runtime calls in the trace"
    )
    for depth, run in zip(depths, runs):
        steps = run[a.skip :]
        # a run's last step can hold the next test's context setup and one-token warm-up (also a decode step)
        m0 = med([(edges[i + 1] - edges[i]) / 1e3 for i in steps])
        dropped = [i for i in steps if (edges[i + 1] - edges[i]) / 1e3 > 3 * m0]
        steps = [i for i in steps if i not in dropped]
        wall = [(edges[i + 1] - edges[i]) / 1e3 for i in steps]
        ksum = [sum(k[1] - k[0] for k in kb[i]) / 1e3 for i in steps]  # start to end, overlaps counted twice
        # GPU busy: union of kernel, memcpy and memset intervals
        busy = []
        for i in steps:
            iv = sorted(
                [(k[0], k[1]) for k in kb[i]] + [(m[0], m[1]) for m in mb[i]] + [(m[0], m[1]) for m in sb[i]]
            )
            tot, cs, ce = 0, None, None
            for s, e in iv:
                if ce is None or s > ce:
                    if ce is not None:
                        tot += ce - cs
                    cs, ce = s, e
                else:
                    ce = max(ce, e)
            if ce is not None:
                tot += ce - cs
            busy.append(tot / 1e3)
        nk = [len(kb[i]) for i in steps]
        per_kernel_t: dict[str, list[float]] = defaultdict(list)
        per_kernel_n: dict[str, list[int]] = defaultdict(list)
        per_group_t: dict[str, list[float]] = defaultdict(list)
        per_group_n: dict[str, list[int]] = defaultdict(list)
        graphed = []
        api_n: dict[str, list[int]] = defaultdict(list)
        api_t: dict[str, list[float]] = defaultdict(list)
        step_k, step_a = [], []
        for i in steps:
            t, n, gt, gn = defaultdict(float), Counter(), defaultdict(float), Counter()
            prev_end = 0
            for k in kb[i]:
                nm = names[k[3]]
                # exclusive time: from the later of its start and the end of the kernels before it (a kernel
                # launched with programmatic dependent launch starts early and waits inside for its predecessor)
                d = max(0, k[1] - max(k[0], prev_end)) / 1e3
                prev_end = max(prev_end, k[1])
                t[short(nm)] += d
                n[short(nm)] += 1
                gt[group(nm)] += d
                gn[group(nm)] += 1
            graphed.append(sum(1 for k in kb[i] if k[2]) / max(1, len(kb[i])))
            step_k.append((t, n, gt, gn))
            at, an = defaultdict(float), Counter()
            for r in ab[i]:
                at[r[2]] += (r[1] - r[0]) / 1e3
                an[r[2]] += 1
            step_a.append((at, an))
            csv_rows.append(
                (
                    a.label,
                    depth,
                    i,
                    (edges[i + 1] - edges[i]) / 1e3,
                    sum(k[1] - k[0] for k in kb[i]) / 1e3,
                    len(kb[i]),
                    len(mb[i]),
                    len(sb[i]),
                    len(ab[i]),
                    gt.get("attention: radar", 0.0) + gt.get("attention: flash_attn", 0.0),
                )
            )
        # medians over every kept step, a name absent from a step counting 0 there
        for t, n, gt, gn in step_k:
            for key in {x for st in step_k for x in st[0]}:
                per_kernel_t[key].append(t.get(key, 0.0))
                per_kernel_n[key].append(n.get(key, 0))
            for key in {x for st in step_k for x in st[2]}:
                per_group_t[key].append(gt.get(key, 0.0))
                per_group_n[key].append(gn.get(key, 0))
        for at, an in step_a:
            for key in {x for st in step_a for x in st[0]}:
                api_t[key].append(at.get(key, 0.0))
                api_n[key].append(an.get(key, 0))
        w, s_, b_ = med(wall), med(ksum), med(busy)
        attn = med(
            [
                x + y
                for x, y in zip(
                    per_group_t.get("attention: radar", [0.0] * len(steps)),
                    per_group_t.get("attention: flash_attn", [0.0] * len(steps)),
                )
            ]
        )
        p("")
        p(
            f"## depth {depth}: {len(steps)} steps kept of {len(run)} "
            f"({len(dropped)} over 3x the median wall time left out)"
        )
        p(f"wall per step {w:9.1f} us  ({1e6 / w:.1f} tok/s; min {min(wall):.1f}, max {max(wall):.1f})")
        p(f"kernels summed {s_:9.1f} us  (start to end of each; GPU busy incl. copies {b_:.1f} us)")
        p(
            f"gap            {w - b_:9.1f} us  (wall - GPU busy: host work, launch latency, idle between kernels)"
        )
        p(
            f"launches/step  {med(nk):9.0f} kernels ({med(nk) / a.layers:.1f} per layer over {a.layers} layers), "
            f"{med([len(mb[i]) for i in steps]):.0f} memcpys, {med([len(sb[i]) for i in steps]):.0f} memsets; "
            f"{100 * med(graphed):.0f}% of kernels from a CUDA graph"
        )
        p("")
        p(
            "(us/step below: exclusive time, each kernel from the later of its start and its predecessors' end)"
        )
        p(f"{'group':32s} {'launches':>8s} {'us/step':>9s} {'share':>6s}")
        for g in sorted(per_group_t, key=lambda g: -med(per_group_t[g])):
            share = 100 * med(per_group_t[g]) / max(b_, 1e-9)
            p(f"{g:32s} {med(per_group_n[g]):8.0f} {med(per_group_t[g]):9.1f} {share:5.1f}%")
        p("")
        p(f"{'kernel':70s} {'launches':>8s} {'us/step':>9s} {'us each':>8s}")
        for kname in sorted(per_kernel_t, key=lambda x: -med(per_kernel_t[x])):
            n_ = med(per_kernel_n[kname])
            p(
                f"{kname:70s} {n_:8.0f} {med(per_kernel_t[kname]):9.1f} {med(per_kernel_t[kname]) / max(n_, 1):8.2f}"
            )
        if api_t:
            p("")
            p(f"{'runtime API call (host)':40s} {'calls':>6s} {'us/step':>9s}")
            for key in sorted(api_t, key=lambda x: -med(api_t[x])):
                p(f"{key:40s} {med(api_n[key]):6.0f} {med(api_t[key]):9.1f}")
        summary[depth] = {
            "steps": len(steps),
            "wall_us": round(w, 1),
            "kernels_us": round(s_, 1),
            "busy_us": round(b_, 1),
            "gap_us": round(w - b_, 1),
            "steps_dropped": len(dropped),
            "attention_us": round(attn, 1),
            "other_us": round(b_ - attn, 1),
            "kernels_per_step": med(nk),
            "memcpys_per_step": med([len(mb[i]) for i in steps]),
            "memsets_per_step": med([len(sb[i]) for i in steps]),
            "groups_us": {g: round(med(v), 1) for g, v in per_group_t.items()},
            "groups_launches": {g: med(v) for g, v in per_group_n.items()},
        }
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out + ".txt", "w") as f:
            f.write(text + "\n")
        with open(a.out + "-steps.csv", "w") as f:
            f.write(
                "label,depth,step,wall_us,kernels_us,kernels,memcpys,memsets,runtime_calls,attention_us\n"
            )
            for r in csv_rows:
                f.write(",".join(f"{x:.1f}" if isinstance(x, float) else str(x) for x in r) + "\n")
        with open(a.out + ".json", "w") as f:
            json.dump({"label": a.label, "layers": a.layers, "skip": a.skip, "depths": summary}, f, indent=1)


if __name__ == "__main__":
    main()
