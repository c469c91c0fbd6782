"""`python -m radar_gguf.serve`: a real server process and a real HTTP client (urllib)."""

from __future__ import annotations

import json
import re
import selectors
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import REPO

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with open(log, "w") as err:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "radar_gguf.serve",
                str(model_path),
                "--ctx",
                "2048",
                "--port",
                "0",
                "--alias",
                "qwen-test",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
        )
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    url = None
    deadline = time.time() + 120
    while url is None and time.time() < deadline and p.poll() is None:
        if sel.select(timeout=1):
            m = re.search(r"listening on (http://\S+?)/v1", p.stdout.readline())
            url = m.group(1) if m else None
    if url is None:
        p.kill()
        pytest.fail(f"the server did not start: {log.read_text()}")
    yield url
    p.terminate()
    try:
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 0, log.read_text()


def post(url: str, path: str, body, raw: bool = False):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        resp = urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    if raw:
        return resp.status, resp
    with resp:
        return resp.status, json.loads(resp.read())


def sse_events(resp) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    with resp:
        lines = resp.read().decode().split("\n")
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def test_models(server):
    with urllib.request.urlopen(server + "/v1/models", timeout=30) as r:
        body = json.loads(r.read())
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "qwen-test" and body["data"][0]["object"] == "model"


def test_chat_completion(server):
    status, body = post(
        server,
        "/v1/chat/completions",
        {"model": "qwen-test", "messages": CAPITAL, "max_tokens": 8, "temperature": 0},
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["prompt_tokens"] > 10 and 1 <= u["completion_tokens"] <= 8
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the same conversation again: its prompt is already in the context (all but its last token, which
    # is evaluated alone: another batch shape than the first request's prefill, other float rounding,
    # so on some CPUs other words; the answer stays right). A third time takes the second's path exactly
    # (the same reused cells, the same last token alone): the same reply, bit for bit.
    again = [
        post(server, "/v1/chat/completions", {"messages": CAPITAL, "max_tokens": 8, "temperature": 0})[1]
        for _ in range(2)
    ]
    assert "Paris" in again[0]["choices"][0]["message"]["content"]
    assert again[1]["choices"][0]["message"]["content"] == again[0]["choices"][0]["message"]["content"]
    for a in again:
        assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == u["prompt_tokens"] - 1


def test_streaming_chat(server):
    status, resp = post(
        server,
        "/v1/chat/completions",
        {
            "messages": CAPITAL,
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        raw=True,
    )
    assert status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 4  # role, some content, finish, usage
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "Paris" in text
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


@pytest.mark.slow  # ~25 s on 2 cores: four completions of up to 24 tokens
def test_streaming_completion_and_stop(server):
    status, resp = post(
        server,
        "/v1/completions",
        {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": True},
        raw=True,
    )
    assert status == 200
    events = sse_events(resp)
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "Paris" in "".join(c["choices"][0]["text"] for c in chunks)
    # a stop string never leaks, not even its first characters, when streamed piece by piece
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 24, "temperature": 0, "stop": [" 9,"]}
    # like with like: the streamed request is compared with a plain one that reused the prompt's cells
    # as it does (a first request prefills the whole prompt in one batch: other rounding, on some CPUs
    # other tokens)
    for _ in range(2):
        status, plain = post(server, "/v1/completions", body)
        assert status == 200 and plain["choices"][0]["finish_reason"] == "stop", plain
        assert plain["choices"][0]["text"].rstrip().endswith("8,")
    status, resp = post(server, "/v1/completions", {**body, "stream": True}, raw=True)
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in sse_events(resp)[:-1])
    assert streamed == plain["choices"][0]["text"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", {"max_tokens": 4}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"messages": CAPITAL, "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": 42}, "prompt"),
        ("/v1/completions", {"prompt": "word " * 3000}, "prompt"),
    ],
    ids=["bad-json", "no-messages", "bad-role", "bad-temperature", "bad-prompt", "too-long"],
)
def test_bad_requests_are_400(server, path, body, param):
    status, err = post(server, path, body)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"]
    assert err["error"]["param"] == param


def test_unknown_endpoint_is_404(server):
    status, err = post(server, "/v1/embeddings", {"input": "hi"})
    assert status == 404 and "no such endpoint" in err["error"]["message"]
