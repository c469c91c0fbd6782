"""Bad input to the front ends is a clear error that loses nothing: REPL /save and /load paths, CLI flags
out of range (usage errors, exit 2), sampling parameters out of range in the API, a stop string, and
``model.llama`` from another thread while a generation is open."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading

import pytest
from conftest import REPO, run_cli

import radar_gguf
from radar_gguf.session import read_session_header

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def model(model_path):
    with radar_gguf.load(model_path, ctx=1024) as m:
        yield m


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


# -- 1. REPL /save and /load ------------------------------------------------------------------------


def test_repl_save_load_bad_paths_keep_the_chat(tmp_path, model_path):
    good = tmp_path / "good.session"
    a_dir = tmp_path / "folder"
    a_dir.mkdir()
    bad = [
        "/save /",
        "/save .",
        "/save ..",
        "/save ''",
        f"/save {a_dir}",
        f"/save {tmp_path}/missing/x.session",
        "/save /proc/no-such-dir/x.session",
        "/load /",
        f"/load {a_dir}",
        "/load ''",
        f"/load {tmp_path}/missing.session",
    ]
    script = "\n".join(["My name is Ada. Reply with OK.", *bad, "/ctx", f"/save {good}", ""])
    r = run_cli(str(model_path), "--ctx", "1024", "-n", "8", input=script)
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    out = r.stdout
    assert out.count("error: ") == len(bad) - 2, out  # the two empty paths get the usage line instead
    assert out.count("usage: /save FILE") == 1 and out.count("usage: /load FILE") == 1, out
    assert f"{a_dir} is a directory" in out
    assert "does not exist" in out
    assert "is not a file name" in out or "is a directory" in out
    assert not list(a_dir.iterdir()) and not (tmp_path / "folder.tmp").exists()  # nothing written
    # the conversation is intact: the context still holds it and the good save carries it
    ctx_line = next(ln for ln in out.splitlines() if ln.startswith("context: "))
    assert int(ctx_line.split()[1].split("/")[0]) > 10
    header, _ = read_session_header(good)
    roles = [m["role"] for m in header["history"]]
    assert roles[-2:] == ["user", "assistant"] and "Ada" in header["history"][-2]["content"]


def test_repl_radar_switch_error_keeps_the_chat(capsys):
    from radar_gguf.config import RadarConfig
    from radar_gguf.run import repl

    class Stub:
        radar = RadarConfig()
        ctx, n_past = 1024, 7

        def set_radar(self, cfg):
            raise RuntimeError("Radar cannot be enabled: no kernels for this head size")

    args = argparse.Namespace(system=None, max_tokens=4, temp=0.0, top_p=0.95)
    assert repl(Stub(), args, stdin=io.StringIO("/radar off\n/ctx\n")) == 0
    out = capsys.readouterr().out
    assert "error: Radar cannot be enabled" in out and "context: 7/1024 tokens" in out


def test_repl_line_that_is_not_utf8(model_path):
    r = subprocess.run(
        [sys.executable, "-m", "radar_gguf.run", str(model_path), "--ctx", "1024", "-n", "4"],
        input=b"\xff\xfeSay hi.\n/ctx\n",
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert "codec" not in out + err and "Traceback" not in err, out + err
    assert "context: " in out


# -- 2. model.llama from another thread ----------------------------------------------------------


def _tokens(gen) -> list:
    return [r.token for r in gen]


def test_llama_from_another_thread_waits_for_the_open_generation(model):
    want = _tokens(model.stream_generate(PROMPT, max_tokens=8, add_bos=False))
    gen = model.stream_generate(PROMPT, max_tokens=8, add_bos=False)
    got = [next(gen).token]
    done = threading.Event()
    errors: list = []

    def other() -> None:
        try:
            llama = model.llama
            toks = llama.tokenize(b"Something else entirely, in another thread.", add_bos=False)
            llama.eval(toks)
            llama.n_tokens = 3
            llama.reset()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        done.set()

    t = threading.Thread(target=other)
    t.start()
    try:
        waited = not done.wait(0.5)  # the other thread's calls must wait: the generation holds the model
        got += _tokens(gen)
    finally:
        gen.close()
        t.join(60)
    assert got == want  # the open generation was not disturbed
    assert waited and done.is_set() and not errors, errors
    assert model.n_past == 0  # the other thread's calls ran after it


def test_llama_in_the_generating_thread_is_refused_but_queries_work(model):
    gen = model.stream_generate(PROMPT, max_tokens=4, add_bos=False)
    try:
        next(gen)
        toks = model.llama.tokenize(b"Paris", add_bos=False)  # a vocabulary query: fine
        assert toks and model.llama.n_vocab() > 0 and model.llama.n_tokens > 0
        with pytest.raises(RuntimeError, match="still open in this thread"):
            model.llama.eval(toks)
        with pytest.raises(RuntimeError, match="still open in this thread"):
            model.llama.reset()
        with pytest.raises(RuntimeError, match="still open in this thread"):
            model.llama.n_tokens = 0
    finally:
        gen.close()
    # outside a generation, and inside the caller's own hold, calls go through
    with model.exclusive("test"):
        model.prefill(model.tokenize(PROMPT, add_bos=False))
        model.llama.eval(toks)
        model.reset()
    assert model.n_past == 0
    model.llama.eval(toks)
    assert model.n_past == len(toks)


def test_session_save_load_through_the_guard(model, tmp_path):
    from radar_gguf.session import load_session, save_session

    model.prefill(model.tokenize(PROMPT, add_bos=False))
    n = model.n_past
    save_session(model, tmp_path / "s.session", [{"role": "user", "content": PROMPT}])
    model.reset()
    assert load_session(model, tmp_path / "s.session")[0]["content"] == PROMPT
    assert model.n_past == n


# -- 3. a stop string ----------------------------------------------------------------------------------


def test_stop_string_is_one_stop_not_its_characters(model):
    full = model.generate(PROMPT, max_tokens=8, add_bos=False)
    assert len(full.strip()) > 3
    absent = full.strip()[1] + full.strip()[0] + "\x01"  # its characters occur, the string does not
    assert model.generate(PROMPT, max_tokens=8, add_bos=False, stop=absent) == full
    assert (
        "".join(r.text for r in model.stream_generate(PROMPT, max_tokens=8, add_bos=False, stop=absent))
        == full
    )
    cut = full.strip()[2:5]
    assert model.generate(PROMPT, max_tokens=8, add_bos=False, stop=cut) == full[: full.index(cut)]
    msgs = [{"role": "user", "content": "What is 2+2? Answer with a number."}]
    reply = model.chat(msgs, max_tokens=8)
    assert len(reply) >= 1
    assert model.chat(msgs, max_tokens=8, stop=reply[0] + "\x01") == reply


# -- 4. sampling parameters out of range -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"seed": -7}, "seed"),
        ({"stop": [1, 2]}, "stop"),
    ],
)
def test_sampling_out_of_range_is_a_value_error(model, kwargs, name):
    model.prefill(model.tokenize(PROMPT, add_bos=False))
    n = model.n_past
    with pytest.raises(ValueError, match=name):
        model.stream_generate(PROMPT, add_bos=False, **kwargs)  # at the call, before any token
    with pytest.raises(ValueError, match=name):
        model.generate(PROMPT, add_bos=False, **kwargs)
    with pytest.raises(ValueError, match=name):
        model.chat([{"role": "user", "content": "Hi"}], **kwargs)
    assert model.n_past == n  # the context is as it was


def test_sampling_edges_are_accepted(model):
    assert model.generate(PROMPT, max_tokens=0, add_bos=False) == ""
    kw = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 1, "stop": None}
    assert model.generate(PROMPT, max_tokens=2, add_bos=False, **kw)
    reply = list(model.stream_chat([{"role": "user", "content": "Reply with OK."}], max_tokens=None))
    assert reply[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"threads": 0}, "threads"),
        ({"threads": -2}, "threads"),
        ({"gpu_layers": -5}, "gpu_layers"),
        ({"ctx": 0}, "ctx"),
        ({"ctx": 1024.5}, "ctx"),
        ({"ctx": "8k"}, "ctx"),
        ({"n_batch": 0}, "n_batch"),
        ({"split_mode": "rows"}, "split_mode"),
        ({"tensor_split": [1, -1]}, "tensor_split"),
        ({"tensor_split": [0, 0]}, "tensor_split"),
        ({"tensor_split": "3,1"}, "tensor_split"),
        ({"rpc": "localhost"}, "rpc"),
        ({"rpc": ["h:1", 5]}, "rpc"),
    ],
)
def test_load_arguments_out_of_range(model_path, kwargs, name):
    kwargs = {"ctx": 1024, **kwargs}
    with pytest.raises(ValueError, match=name):
        radar_gguf.load(model_path, **kwargs)


# -- 5. CLI flags out of range: usage errors --------------------------------------------------------


RUN_BAD = [
    (["--threads", "0"], "--threads"),
    (["-t", "-3"], "--threads"),
    (["-n", "-5"], "--max-tokens"),
    (["-n", "0"], "--max-tokens"),
    (["--temp", "-1"], "--temp"),
    (["--temp", "nan"], "--temp"),
    (["--top-p", "5"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["-ngl", "-5"], "--gpu-layers"),
    (["--rpc", "host"], "--rpc"),
    (["--rpc", "host:99999"], "--rpc"),
    (["--tensor-split", "1,x"], "--tensor-split"),
    (["--tensor-split", "0,0"], "--tensor-split"),
    (["--split-mode", "rows"], "--split-mode"),
    (["--seed", "-2"], "--seed"),
    (["--ctx", "4g"], "--ctx"),
    (["--radar-dense-below", "-3"], "--radar-dense-below"),
]
SUMMARIZE_BAD = [
    (["--threads", "0"], "--threads"),
    (["-n", "-5"], "--max-tokens"),
    (["--temp", "-1"], "--temp"),
    (["--chunk-tokens", "8"], "--chunk-tokens"),
    (["--seed", "x"], "--seed"),
]


@pytest.mark.parametrize(
    "module, argv, flag",
    [("radar_gguf.run", a, f) for a, f in RUN_BAD]
    + [("radar_gguf.summarize", a, f) for a, f in SUMMARIZE_BAD],
)
def test_cli_flags_out_of_range_are_usage_errors(capsys, module, argv, flag):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main([*argv, "-p", "Hi"] if module == "radar_gguf.run" else [*argv, "doc.txt"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument " in err and flag in err, err


def test_cli_usage_error_in_a_subprocess():
    for module, argv in (
        ("radar_gguf.run", ["--temp", "-1", "-p", "Hi"]),
        ("radar_gguf.summarize", ["-n", "-5"]),
    ):
        r = run_cli(*argv, module=module)
        assert r.returncode == 2, r.stderr
        _no_traceback(r)
        assert "error: argument" in r.stderr


def test_radar_dense_below_takes_its_documented_values():
    from radar_gguf.run import setup_arg_parser

    p = setup_arg_parser()
    assert p.parse_args(["--radar-dense-below", "-1"]).radar_dense_below == -1
    assert p.parse_args(["--radar-dense-below", "0"]).radar_dense_below == 0
    assert p.parse_args(["--radar-dense-below", "2k"]).radar_dense_below == 2048


# -- 6. other input mistakes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, stdin, needle",
    [
        (["-p", "-"], "", "empty"),
        (["-p", "   "], None, "empty"),
        (["--raw", "-p", "-"], "", "empty"),
    ],
)
def test_empty_prompt_is_a_usage_error(argv, stdin, needle):
    r = run_cli("--ctx", "1024", *argv, input=stdin)
    assert r.returncode == 2, r.stderr
    _no_traceback(r)
    assert "error: " in r.stderr and needle in r.stderr


def test_prompt_from_stdin_that_is_not_utf8():
    r = subprocess.run(
        [sys.executable, "-m", "radar_gguf.run", "--ctx", "1024", "-p", "-"],
        input=b"\xff\xfeHello\n",
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("out", ["/", ".", "DIR", "", "DIR/missing/summary.md"])
def test_summarize_out_is_checked_before_any_work(tmp_path, out):
    doc = tmp_path / "doc.txt"
    doc.write_text("A short document about bridges.\n")
    (tmp_path / "DIR").mkdir()
    out = out.replace("DIR", str(tmp_path / "DIR"))
    # the model does not exist: an --out problem must be reported before the model is looked at
    r = run_cli(str(doc), "-m", str(tmp_path / "no-model.gguf"), "--out", out, module="radar_gguf.summarize")
    assert r.returncode == 1
    _no_traceback(r)
    assert "no-model" not in r.stderr, r.stderr
    assert "directory" in r.stderr or "does not exist" in r.stderr or "file name" in r.stderr, r.stderr


def test_prompt_argument_that_is_not_utf8(model_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "radar_gguf.run",
            str(model_path),
            "--ctx",
            "1024",
            "-n",
            "2",
            "-p",
            b"Hi \xff",
        ],
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "codec" not in err and r.stdout.strip()
