"""REPL /save and /load: a conversation resumes with its KV cache, exactly, without re-prefill."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

Q1 = "My name is Ada and my favourite colour is teal. Reply with OK."
Q2 = "What is my favourite colour? Answer with one word."
ARGS = ("--ctx", "2048", "-n", "16")
CTX_LINE = re.compile(r"^context: (\d+)/2048 tokens$", re.M)
PROMPT_LINE = re.compile(r"^prompt: (\d+) tokens at", re.M)


def _follow_up(out: str) -> tuple[int, str, int]:
    """(context tokens at /ctx, the reply after it, prompt tokens of that reply from /stats)."""
    ctx = CTX_LINE.search(out)
    stats = PROMPT_LINE.search(out, ctx.end())
    return int(ctx.group(1)), out[ctx.end() : stats.start()].strip(), int(stats.group(1))


@pytest.mark.slow  # three REPL subprocesses, two turns each
def test_save_load_resumes_without_prefill(tmp_path, model_path):
    session = tmp_path / "chat.session"
    one = run_cli(str(model_path), *ARGS, input=f"{Q1}\n/ctx\n{Q2}\n/stats\n")
    assert one.returncode == 0, one.stderr
    first = run_cli(str(model_path), *ARGS, input=f"{Q1}\n/ctx\n/save {session}\n")
    assert first.returncode == 0, first.stderr
    assert f"to {session})" in first.stdout and session.stat().st_size > 0
    second = run_cli(str(model_path), *ARGS, input=f"/load {session}\n/ctx\n{Q2}\n/stats\n")
    assert second.returncode == 0, second.stderr
    assert "(loaded 1 turn;" in second.stdout

    n_ctx, reply, n_prompt = _follow_up(one.stdout)
    n_ctx2, reply2, n_prompt2 = _follow_up(second.stdout)
    assert first.stdout.split("\ncontext:")[0] == one.stdout.split("\ncontext:")[0]  # same first reply
    assert n_ctx2 == n_ctx > 0  # the whole first exchange is back in the context
    assert reply2 == reply  # greedy: the same answer as the uninterrupted session
    assert "teal" in reply.lower()  # it needed the history
    assert n_prompt2 == n_prompt < n_ctx  # only the new turn was evaluated


def test_load_refuses_other_model_or_context(tmp_path, model_path):
    from radar_gguf.session import _SESSION_PREFIX, SESSION_MAGIC, SESSION_VERSION, read_session_header

    good = tmp_path / "good.session"
    r = run_cli(str(model_path), *ARGS, input=f"/system You are terse.\nHi\n/save {good}\n")
    assert r.returncode == 0, r.stderr
    header, offset = read_session_header(good)
    assert header["history"][0] == {"role": "system", "content": "You are terse."}
    # the same file, claiming another model
    header["model"] = {**header["model"], "file": "other.gguf", "sha256_head": "0" * 64}
    head = json.dumps(header).encode()
    other = tmp_path / "other.session"
    other.write_bytes(
        _SESSION_PREFIX.pack(SESSION_MAGIC, SESSION_VERSION, len(head)) + head + good.read_bytes()[offset:]
    )
    junk = tmp_path / "junk.session"
    junk.write_bytes(b"hello")

    script = (
        f"/load {other}\n/load {junk}\n/load {tmp_path / 'missing'}\n/load {good}\n/ctx\n/system\n/help\n"
    )
    r = run_cli(str(model_path), "--ctx", "1024", "-n", "16", input=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "saved with the model other.gguf" in out
    assert "not a radar_gguf conversation file" in out
    assert "missing: no such file" in out
    assert "saved with a 2k context; this chat has 1k. Restart with --ctx 2k" in out
    assert "context: 0/1024 tokens" in out  # refused: nothing was loaded
    assert "/save FILE" in out and "/load FILE" in out and "/system" in out  # /help
    assert "(no system prompt)" in out
