"""`radar-gguf serve`: llama.cpp's llama-server launched with Radar in every slot, driven over HTTP on
127.0.0.1 by the official ``openai`` client (and raw HTTP for what a client library would refuse to send).

Three servers of the bundled model, each started once per module: ``server`` for the API (4 slots, an
API key, Radar active from 64 tokens with a budget above the context, so it selects every segment and
stays exact), ``radar_server`` with a Radar so tight that its output leaves dense attention's (to show
that every slot decodes with Radar), and ``embed_server`` (``--embeddings``, llama-server's mode for it).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from conftest import REPO, run_cli

from radar_gguf.config import RadarConfig
from radar_gguf.serve import radar_env, slot_ctx

pytestmark = pytest.mark.slow  # every test here runs llama-server processes

KEY = "sk-radar-test"
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
# Radar settings of radar_server and its single-sequence reference: active from 32 tokens, 16 selected (on
# this prompt its greedy output leaves dense attention's at the third token)
# one stage: two stages choose so well that 16 tokens decode this prompt as dense does
TIGHT = RadarConfig(dense_below=32, token_budget=16, n_recent=16, rescore=0.0)
TIGHT_FLAGS = [
    "--radar-dense-below",
    "32",
    "--radar-budget",
    "16",
    "--radar-window",
    "16",
    "--radar-rescore",
    "0",
]
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launched:
    """``python -m radar_gguf.serve ...`` as a user runs it; its stderr (the server's log) in a file."""

    def __init__(self, args: list, log: Path, port: int = 0) -> None:
        self.log = log
        self.port = port or free_port()
        cmd = [sys.executable, "-m", "radar_gguf.serve", "--port", str(self.port), "--verbose", *args]
        with open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.url = None
        deadline = time.time() + START_TIMEOUT
        while self.url is None and time.time() < deadline and self.proc.poll() is None:
            if sel.select(timeout=1):
                m = re.search(r"listening on (http://\S+?)/v1", self.proc.stdout.readline())
                self.url = m.group(1) if m else None
        if self.url is None:
            self.stop()
            pytest.fail(f"the server did not start: {log.read_text()[-4000:]}")

    def text(self) -> str:
        return self.log.read_text()

    def server_pid(self) -> int:
        """The llama-server child of the launcher."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(kids[0])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def launched(model_path, tmp_path_factory, name: str, *args: str):
    srv = Launched([str(model_path), *args], tmp_path_factory.mktemp(name) / "serve.log")
    yield srv
    assert srv.stop() == 0, srv.text()[-4000:]


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    args = ["--ctx", "2048", "--parallel", "4", "--alias", "qwen-test", "--api-key", KEY, "--metrics"]
    yield from launched(model_path, tmp_path_factory, "api", *args, "--radar-dense-below", "64")


@pytest.fixture(scope="module")
def radar_server(model_path, tmp_path_factory):
    yield from launched(
        model_path, tmp_path_factory, "radar", "--ctx", "1024", "--parallel", "4", *TIGHT_FLAGS
    )


@pytest.fixture(scope="module")
def embed_server(model_path, tmp_path_factory):
    # the model's GGUF names no pooling (it is not an embedding model): mean pooling, a llama-server flag
    args = ["--ctx", "512", "--parallel", "1", "--embeddings", "--", "--pooling", "mean"]
    yield from launched(model_path, tmp_path_factory, "embed", *args)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=120, max_retries=0)


def raw(url: str, method: str, path: str, body=None, headers=None) -> tuple:
    """One HTTP request as bytes on the wire: (status, parsed JSON or text)."""
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})}
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    c.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


# -- the launcher ----------------------------------------------------------------------------------------


def test_radar_env_keys():
    """The flags reach the library as the keys of its LLAMA_RADAR parser, --no-radar as 0."""
    env = radar_env(RadarConfig(token_budget=512, dense_below=16384, shared_gqa=True, score="minmax"))
    kv = dict(item.split("=") for item in env.split(","))
    assert kv["budget"] == "512" and kv["dense_below"] == "16384" and kv["shared"] == "1"
    assert kv["score"] == "3" and kv["summary"] == "f16" and kv["window"] == "32" and kv["sinks"] == "1"
    assert kv["rescore"] == "4" and "rescore=0," in radar_env(RadarConfig(rescore=0.0)) + ","
    assert kv["mass"] == "0.99" and "mass=0," in radar_env(RadarConfig(mass_target=0.0)) + ","
    adaptive = dict(
        item.split("=") for item in radar_env(RadarConfig(rescore_mass=0.9, rescore_max=16.0)).split(",")
    )
    assert adaptive["rescore_mass"] == "0.9" and adaptive["rescore_max"] == "16" and kv["rescore_mass"] == "0"
    assert radar_env(RadarConfig(enabled=False)) == "0"
    assert slot_ctx(2048) == 2048 and slot_ctx(2049) == 2304


def test_server_argv_places_layers_as_load_does(model_path):
    from radar_gguf.serve import server_argv, setup_arg_parser

    def argv(*flags):
        return server_argv(Path("llama-server"), model_path, setup_arg_parser().parse_args([*flags]), [])

    local = argv()
    assert local[local.index("-ngl") + 1] == "0" and "--rpc" not in local and "-sm" in local
    split = argv("--rpc", "10.0.0.2:50052,10.0.0.3:50052", "--tensor-split", "3,1")
    assert split[split.index("-ngl") + 1] == "-1"  # all layers to the workers, as load(rpc=...) does
    assert split[split.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    assert split[split.index("-ts") + 1] == "3,1" and split[split.index("-sm") + 1] == "layer"
    some = argv("--rpc", "10.0.0.2:50052", "-ngl", "8")
    assert some[some.index("-ngl") + 1] == "8"


def test_a_worker_that_cannot_be_used_stops_serve_before_the_server_starts(model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = run_cli(str(model_path), "--rpc", f"127.0.0.1:{port}", module="radar_gguf.serve", timeout=120)
    assert r.returncode == 1 and f"rpc worker 127.0.0.1:{port}: cannot connect" in r.stderr
    assert "Traceback" not in r.stderr


def test_user_errors_are_one_line(model_path, tmp_path):
    missing = run_cli(str(tmp_path / "nope.gguf"), module="radar_gguf.serve", timeout=120)
    assert missing.returncode == 1 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_cli("--parallel", "0", module="radar_gguf.serve", timeout=60)
    assert bad.returncode == 2 and "--parallel" in bad.stderr
    huge = run_cli(str(model_path), "--ctx", "1m", "--parallel", "64", module="radar_gguf.serve", timeout=300)
    assert huge.returncode == 1 and "does not fit" in huge.stderr and "Traceback" not in huge.stderr
    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = run_cli(
            str(model_path), "--port", str(s.getsockname()[1]), module="radar_gguf.serve", timeout=120
        )
    assert busy.returncode == 1 and "cannot listen" in busy.stderr and "Traceback" not in busy.stderr


def test_server_dies_with_the_launcher(model_path, tmp_path):
    srv = Launched([str(model_path), "--ctx", "512", "--parallel", "1"], tmp_path / "serve.log")
    pid = srv.server_pid()
    os.kill(srv.proc.pid, signal.SIGKILL)  # no chance to clean up: the kernel kills the child
    srv.proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":  # gone, only its exit status left (reaped by init)
            break
        time.sleep(0.2)
    else:
        assert not Path(f"/proc/{pid}").exists(), "llama-server outlived its launcher"


def test_sigint_stops_the_server(model_path, tmp_path):
    srv = Launched([str(model_path), "--ctx", "512", "--parallel", "1"], tmp_path / "serve.log")
    pid = srv.server_pid()
    assert srv.stop(signal.SIGINT) == 0, srv.text()[-3000:]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


# -- the API -----------------------------------------------------------------------------------------------


def test_slots_and_radar_in_the_log(server):
    log = server.text()
    assert "LLAMA_RADAR: Radar on (budget 1024, dense below 64)" in log
    assert re.search(r"n_slots = 4, n_ctx_slot = 2048, kv_unified = 'false'", log), log[-3000:]
    status, slots = raw(server.url, "GET", "/slots")
    assert status == 200 and len(slots) == 4 and all(s["n_ctx"] == 2048 for s in slots)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["qwen-test"]
    assert raw(server.url, "GET", "/health", headers={"Authorization": ""})[0] == 200
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=4)


def test_chat_and_completion(client):
    r = client.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=8, temperature=0)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 1 <= r.usage.completion_tokens <= 8
    c = client.completions.create(model="qwen-test", prompt="def fibonacci(n):", max_tokens=16, temperature=0)
    assert c.choices[0].text.strip() and c.usage.completion_tokens == 16


def test_streaming(client):
    plain = client.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="qwen-test",
            messages=CAPITAL,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and len(chunks) >= 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert "Paris" in plain.choices[0].message.content


def test_stop(client):
    c = client.completions.create(
        model="qwen-test", prompt="1, 2, 3, 4, 5,", max_tokens=32, temperature=0, stop=[" 9"]
    )
    assert c.choices[0].finish_reason == "stop"
    assert "9" not in c.choices[0].text and "8" in c.choices[0].text


def test_tool_call_round_trip(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    msgs = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    r = client.chat.completions.create(
        model="qwen-test", messages=msgs, tools=tools, tool_choice="required", max_tokens=24, temperature=0
    )
    msg = r.choices[0].message
    if msg.tool_calls:
        name, arguments = msg.tool_calls[0].function.name, msg.tool_calls[0].function.arguments
        assert r.choices[0].finish_reason == "tool_calls"
    else:
        # at the pinned llama.cpp the chat auto-parser does not recognise Qwen2.5's template: the tools reach
        # the prompt (the model calls one), but the call comes back as text and tool_choice is not enforced
        # (docs/serve.md). Read the call from the text, as a client of this model would.
        call = json.loads(msg.content[msg.content.index("{") : msg.content.rindex("}") + 1])
        name, arguments = call["name"], json.dumps(call["arguments"])
    assert name == "get_weather" and "paris" in json.loads(arguments)["city"].lower()
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    msgs += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "sunny"}'},
    ]
    r2 = client.chat.completions.create(
        model="qwen-test", messages=msgs, tools=tools, max_tokens=48, temperature=0
    )
    assert "18" in r2.choices[0].message.content, r2.choices[0].message.content


def test_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="qwen-test",
        messages=[{"role": "user", "content": "Give the largest city of Japan and its population as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        max_tokens=64,
        temperature=0,
    )
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"city", "population"} and isinstance(obj["population"], int) and obj["city"]


def test_logprobs(client):
    r = client.chat.completions.create(
        model="qwen-test", messages=CAPITAL, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert t.token == t.top_logprobs[0].token  # greedy takes the most likely token
    c = client.completions.create(
        model="qwen-test", prompt="The sky is", max_tokens=3, temperature=0, logprobs=2
    )
    # llama-server answers /v1/completions logprobs in the chat shape ("content": [...]), not the legacy one
    lp = c.model_dump()["choices"][0]["logprobs"]["content"]
    assert len(lp) == 3 and all(len(t["top_logprobs"]) == 2 for t in lp)


def test_seeds(client):
    def sample(**kw) -> str:
        # like with like: cache_prompt off, so that every request evaluates its whole prompt in one batch (a
        # reused prompt evaluates only its last token, which rounds differently, and at this temperature a
        # draw over the whole vocabulary can land on another token for that)
        p = "Twelve random words, unrelated to each other:"
        extra = {"top_k": 0, "min_p": 0.0, "cache_prompt": False}
        opts = dict(temperature=1.5, top_p=1.0, extra_body=extra, max_tokens=24)
        return client.completions.create(model="qwen-test", prompt=p, **opts, **kw).choices[0].text

    assert sample(seed=1234) == sample(seed=1234)
    assert sample() != sample()


def test_concurrent_streams_decode_together(server, client):
    spans: dict = {}

    def one(i: int) -> None:
        times = []
        for ch in client.completions.create(
            model="qwen-test",
            prompt=f"Count from {i * 100} upward: {i * 100}, {i * 100 + 1},",
            max_tokens=40,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            if ch.choices and ch.choices[0].text:
                times.append(time.perf_counter())
        spans[i] = (times[0], times[-1], len(times))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert len(spans) == 4 and all(n >= 30 for _, _, n in spans.values())
    # decoded together: every stream produced its first token before any stream produced its last
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values()), spans
    status, metrics = raw(server.url, "GET", "/metrics")
    assert status == 200 and "llamacpp:tokens_predicted_total" in metrics


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": "hi"},
        {"prompt": "hi"},
        {"messages": HI, "max_tokens": "many"},
        {"messages": HI, "max_tokens": -5},
        {"messages": HI, "temperature": "hot"},
        {"messages": HI, "response_format": {"type": "yaml"}},
        {"messages": HI, "n": 5},  # more choices than slots
    ],
)
def test_bad_input_is_4xx_and_the_server_keeps_serving(server, client, body):
    status, answer = raw(server.url, "POST", "/v1/chat/completions", body)
    assert 400 <= status < 500 and answer["error"]["type"] == "invalid_request_error", (status, answer)
    r = client.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=4, temperature=0)
    assert "Paris" in r.choices[0].message.content


@pytest.mark.parametrize("body", [b'{"messages": [{"role": "user", "content": "hi"}', b""])
def test_unparsable_input_is_4xx_and_the_server_keeps_serving(server, client, body):
    """A body that is not JSON is the client's error: 400 with the parser's message (the pinned
    llama-server said 500; patch 0006); the server carries on."""
    status, answer = raw(server.url, "POST", "/v1/chat/completions", body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", (status, answer)
    assert answer["error"]["message"]
    r = client.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=4, temperature=0)
    assert "Paris" in r.choices[0].message.content


@pytest.mark.parametrize("tools", ["get_weather", [{"type": "function"}], [{"type": "shell"}]])
def test_malformed_tools_are_400_and_the_server_keeps_serving(server, client, tools):
    """tools that are not a list of function tools: the client's error (patch 0006), with the parser's reason."""
    status, answer = raw(server.url, "POST", "/v1/chat/completions", {"messages": HI, "tools": tools})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", (status, answer)
    assert "tools" in answer["error"]["message"]
    r = client.chat.completions.create(model="qwen-test", messages=CAPITAL, max_tokens=4, temperature=0)
    assert "Paris" in r.choices[0].message.content


def test_unknown_endpoint(server):
    assert raw(server.url, "GET", "/v1/nothing")[0] == 404


def test_embeddings(embed_server):
    e = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="none", max_retries=0)
    r = e.embeddings.create(
        model="any", input=["The cat sat on the mat.", "A cat is on the mat.", "Stock prices fell."]
    )
    v = [d.embedding for d in r.data]
    assert len(v) == 3 and len(v[0]) == 896 and all(len(x) == 896 for x in v)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

    assert cos(v[0], v[1]) > cos(v[0], v[2])


# -- Radar in every slot -----------------------------------------------------------------------------------

PROMPT = (
    "Inventory of the northern warehouse. Each line gives a shelf, an item and a count.\n"
    + "".join(
        f"Shelf {i}: {w} x{(i * 37) % 90 + 10}\n"
        for i, w in enumerate(
            "bolts nuts washers hinges brackets screws rivets clamps springs pulleys gears chains cables "
            "valves pipes fittings gaskets seals bearings shafts".split()
        )
    )
    + "Shelf 20:"
)
N_GEN = 24


@pytest.fixture(scope="module")
def references(model_path):
    """Greedy single-sequence runs through the Python API: Radar at radar_server's settings, and dense."""
    import radar_gguf

    out = {}
    for name, cfg in (("radar", TIGHT), ("dense", RadarConfig(enabled=False))):
        with radar_gguf.load(model_path, ctx=1024, radar=cfg) as m:
            toks = m.tokenize(PROMPT)
            out[name] = [r.token for r in m.stream_generate(toks, max_tokens=N_GEN, temperature=0)]
            out["prompt"] = toks
    # the settings must matter here, or the tests below would not tell Radar from dense
    assert out["radar"] != out["dense"]
    return out


def server_tokens(url: str, prompt: list, slot: int) -> tuple:
    """Greedy tokens of one /completion request on a given slot, with each step's top-2 probabilities."""
    body = {
        "prompt": prompt,
        "n_predict": N_GEN,
        "temperature": 0,
        "id_slot": slot,
        "cache_prompt": False,
        "return_tokens": True,
        "n_probs": 2,
        "ignore_eos": False,
    }
    status, r = raw(url, "POST", "/completion", body)
    assert status == 200, r
    gaps = [
        p["top_logprobs"][0]["logprob"] - p["top_logprobs"][1]["logprob"]
        for p in r["completion_probabilities"]
    ]
    return r["tokens"], gaps


def first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_radar_on_with_one_stream_per_slot(radar_server):
    log = radar_server.text()
    assert "LLAMA_RADAR: Radar on (budget 16, dense below 32)" in log
    assert "kv_unified = 'false'" in log and "n_slots = 4" in log


def test_one_slot_equals_a_single_sequence_run(radar_server, references):
    """Alone on the server, a request decodes with the batch shapes of a single-sequence run: the same
    tokens as the Python API at the same Radar settings, and not dense attention's."""
    toks, _ = server_tokens(radar_server.url, references["prompt"], slot=2)
    assert toks == references["radar"]
    assert toks != references["dense"]


def test_every_slot_decodes_with_radar(radar_server, references):
    """Four requests at once, one per slot, decoded in one batch: each follows the Radar run past the
    point where dense attention leaves it. A batch of four rows may round differently from one row on
    some CPUs (and a score that moves a little can swap a segment in the selection), so a slot may part from
    the reference, but only where its top two tokens were within 0.5 nats."""
    res: dict = {}
    ts = [
        threading.Thread(
            target=lambda s=s: res.__setitem__(s, server_tokens(radar_server.url, references["prompt"], s))
        )
        for s in range(4)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert sorted(res) == [0, 1, 2, 3]
    dense_split = first_difference(references["radar"], references["dense"])
    for slot, (toks, gaps) in res.items():
        k = first_difference(toks, references["radar"])
        if k < len(references["radar"]):
            assert gaps[k] < 0.5, (
                f"slot {slot} left the Radar run at token {k} with a clear choice ({gaps[k]:.3f} nats)"
            )
        assert k > dense_split, (
            f"slot {slot} did not follow Radar past token {dense_split}, where dense parts"
        )
