"""`python -m radar_gguf.run` as a user meets it: answers, the REPL, and clear errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli

from radar_gguf.config import DENSE_BELOW_CPU


def test_library_is_our_build():
    from radar_gguf import RadarConfig, __version__, _lib

    info = _lib.build_info()
    assert info.startswith(f"radar_gguf {__version__}; llama-cpp-python 0.3.36; ggml ")
    # the library's defaults (LLAMA_RADAR=1 in llama-bench / llama-cli) are the Python API's
    assert _lib.radar_defaults() == RadarConfig()


def test_prompt_answers_and_is_deterministic(model_path):
    args = ("-p", "What is the capital of France? Answer with one word.", "-n", "8")
    a = run_cli(str(model_path), *args)
    assert a.returncode == 0, a.stderr
    assert "Paris" in a.stdout
    b = run_cli(*args)  # no MODEL: the bundled model
    assert b.returncode == 0, b.stderr
    assert a.stdout == b.stdout  # greedy decoding is deterministic


def test_repl_answers_resets_and_exits_on_eof(model_path):
    script = "What is the capital of France? Answer with one word.\n/stats\n/reset\n/ctx\n/help\n"
    r = run_cli(str(model_path), "-n", "8", input=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Paris" in out
    assert "decode:" in out and "tok/s" in out  # /stats
    assert "(conversation cleared)" in out
    assert "context: 0/" in out  # /ctx after /reset: the context is empty again
    assert "/radar on|off" in out  # /help


def test_repl_keeps_history(model_path):
    script = "My name is Ada. Reply with OK.\nWhat is my name? Answer with one word.\n"
    r = run_cli(str(model_path), "-n", "12", input=script)
    assert r.returncode == 0, r.stderr
    assert "Ada" in r.stdout.split("\n", 1)[1]


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b"this is not a model\n" * 10), "not a GGUF file"),
        (lambda p: p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 5), "truncated"),
        (lambda p: None, "no such file"),
    ],
    ids=["not-gguf", "truncated", "missing"],
)
def test_bad_model_files_give_a_clear_error(tmp_path, make, needle):
    path = tmp_path / "broken model.gguf"
    make(path)
    r = run_cli(str(path), "-p", "hi", "-n", "1", timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)  # an error exit, not a crash (negative = signal)
    assert "broken model.gguf" in r.stderr
    assert needle in r.stderr


def test_truncated_real_model(tmp_path, model_path):
    cut = tmp_path / "cut.gguf"
    with open(model_path, "rb") as f:
        cut.write_bytes(f.read(3_000_000))  # header intact, tensor data missing
    r = run_cli(str(cut), "-p", "hi", "-n", "1", timeout=60)
    assert r.returncode == 1, r.stderr
    assert "cut.gguf" in r.stderr and "truncated" in r.stderr


@pytest.mark.parametrize("ctx", ["0", "-5", "banana", "1.5"])
def test_ctx_nonsense_is_a_usage_error(ctx):
    r = run_cli("--ctx", ctx, "-p", "hi", timeout=60)
    assert r.returncode == 2
    assert "--ctx" in r.stderr


def test_ctx_above_trained_context_warns(model_path):
    r = run_cli(str(model_path), "--ctx", "40k", "-p", "Say hi.", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert "32768" in r.stderr and "trained" in r.stderr


def test_prompt_longer_than_context(model_path):
    r = run_cli(str(model_path), "--ctx", "64", "--raw", "-p", "word " * 200, "-n", "2")
    assert r.returncode == 1
    assert "context holds 64" in r.stderr


@pytest.mark.parametrize(
    "flag, value, name",
    [
        ("--radar-budget", "0", "token_budget"),
        ("--radar-window", "-1", "n_recent"),
        ("--radar-aspect", "0", "aspect"),
        ("--radar-summary-type", "bf16", "summary-type"),
        ("--radar-mass-target", "1.5", "mass-target"),
        ("--radar-rescore-mass", "1.5", "rescore-mass"),
        ("--radar-rescore-max", "8", "rescore_max"),  # without --radar-rescore-mass it would do nothing
    ],
)
def test_bad_radar_flags_are_usage_errors(flag, value, name):
    r = run_cli(flag, value, "-p", "hi", timeout=60)
    assert r.returncode == 2
    assert name in r.stderr


def test_mass_target_with_one_stage_is_a_usage_error():
    """A mass target asked for explicitly with one stage would do nothing: refused, not ignored."""
    r = run_cli("--radar-rescore", "0", "--radar-mass-target", "0.9", "-p", "hi", timeout=60)
    assert r.returncode == 2 and "two stages" in r.stderr


def test_adaptive_rescore_with_shared_selection_is_a_usage_error():
    """The adaptive candidate count is per head: with a shared selection it is refused, not ignored."""
    r = run_cli("--radar-shared-gqa", "--radar-rescore-mass", "0.9", "-p", "hi", timeout=60)
    assert r.returncode == 2 and "per-head selection" in r.stderr


def _radar_gguf(*args: str, **kw):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "radar_gguf", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_one_command_dispatches_to_every_subcommand():
    """``radar-gguf COMMAND`` (here ``python -m radar_gguf COMMAND``) reaches each command's own flags."""
    r = _radar_gguf("--help")
    assert r.returncode == 0
    for name in ("run", "serve", "summarize", "bench", "eval"):
        assert f"  {name} " in r.stdout
    for name, flag in (
        ("run", "--prompt"),
        ("serve", "--port"),
        ("summarize", "--out"),
        ("bench", "--depths"),
    ):
        h = _radar_gguf(name, "-h")
        assert h.returncode == 0 and flag in h.stdout and f"radar-gguf {name}" in h.stdout, name
    h = _radar_gguf("eval", "ppl", "-h")
    assert h.returncode == 0 and "--corpus" in h.stdout and "--text" in h.stdout


def test_unknown_command_is_a_usage_error():
    r = _radar_gguf("model.gguf")
    assert r.returncode == 2
    assert "unknown command 'model.gguf'" in r.stderr and "radar-gguf run model.gguf" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_fills_with_progress_and_reports_the_ratio(model_path, tmp_path):
    """``bench`` shows a progress bar while it fills the context (a long fill is minutes of silence
    otherwise) and prints dense and Radar tokens/s side by side with their ratio; ``--busy`` is in the
    records it appends; ``--vs`` times another config on the same fill, in its own column and record."""
    out = tmp_path / "bench.json"
    vs = "meanvar:shared_gqa=1,rescore=16"
    r = _radar_gguf(
        "bench", str(model_path), "--depths", "384", "-n", "2", "--rounds", "1", "--radar-dense-below", "256",
        "--busy", "1", "--out", str(out), "--vs", vs,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "fill 384" in r.stderr and "384/384" in r.stderr
    assert r.stdout.count("# depth 384: filled") == 1  # one fill for all three modes
    head = next(line for line in r.stdout.splitlines() if line.startswith("| depth |"))
    assert f"| {vs} tok/s |" in head
    row = next(line for line in r.stdout.splitlines() if line.startswith("| 384 |"))
    dense, radar, ratio, other, other_ratio = (c.strip() for c in row.strip("|").split("|")[1:])
    recs = json.loads(out.read_text())
    assert [(x["mode"], x["busy_processes"]) for x in recs] == [("dense", 1), ("radar", 1), (vs, 1)]
    rate = {x["mode"]: x["tokens_per_s"] for x in recs}
    # the table shows the recorded rates and their ratios to dense (printed with 2 decimals)
    assert (float(dense), float(radar), float(other)) == pytest.approx(
        (rate["dense"], rate["radar"], rate[vs]), abs=0.006
    )
    assert float(ratio.rstrip("x")) == pytest.approx(rate["radar"] / rate["dense"], abs=0.006)
    assert float(other_ratio.rstrip("x")) == pytest.approx(rate[vs] / rate["dense"], abs=0.006)
    params = {x["mode"]: x["radar_params"] for x in recs}
    assert params["dense"] == {"enabled": False}
    assert (params["radar"]["shared_gqa"], params["radar"]["rescore"]) == (False, 4.0)
    # the alternative keeps the flags' other settings (--radar-dense-below) and ran sparse
    assert (params[vs]["shared_gqa"], params[vs]["rescore"], params[vs]["dense_below"]) == (True, 16.0, 256)
    assert all(x["radar_ran"] for x in recs if x["mode"] != "dense")
    bad = _radar_gguf("bench", str(model_path), "--depths", "384", "--vs", "meanvar:no_such_field=1")
    assert bad.returncode == 2 and "--vs" in bad.stderr and "Traceback" not in bad.stderr
    # the mass target's count is a floor: the line says so
    assert "attends all 386 cells" in r.stdout and "attends >= " in r.stdout
    # below the device's threshold the Radar column is dense, and the line says that instead
    r = _radar_gguf("bench", str(model_path), "--depths", "384", "-n", "2", "--rounds", "1")
    assert r.returncode == 0, r.stderr
    assert f"Radar off below dense_below={DENSE_BELOW_CPU}: dense" in r.stdout


def _spinning_children() -> list[int]:
    """PIDs of this process's children that run ``bench.busy_cpu``'s loop."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (p / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"while True: pass" in cmd:
            pids.append(int(p.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_bench_busy_processes_run_only_inside_the_block():
    """``--busy N`` starts N spinning processes for the timed rounds and leaves none behind, also when
    the rounds fail."""
    from radar_gguf.bench import busy_cpu

    with busy_cpu(2):
        assert len(_spinning_children()) == 2
    assert _spinning_children() == []
    with pytest.raises(RuntimeError), busy_cpu(1):
        raise RuntimeError("a failed round")
    assert _spinning_children() == []
