"""An OpenAI-compatible server with Radar in every slot: ``radar-gguf serve [MODEL] --ctx 16k --parallel 4``.

The server is llama.cpp's own ``llama-server``, built from the same patched tree into the package
(``llama_cpp/bin/llama-server``): chat and text completions, embeddings (``--embeddings``), tools, JSON
schema, logprobs, parallel slots with continuous batching, metrics and its web page (docs/serve.md).
This module only launches it, adding what the Python side knows:

- model specs as every radar-gguf command takes them: a path, a bundled model name, or a hub spec
  ``user/repo:QUANT`` (resolved and checked here; the server's own ``-hf`` needs curl, left out of the build);
- the memory-fit check of ``load()``, on the whole KV cache (``--ctx`` per slot times ``--parallel``),
  before anything is allocated;
- the Radar flags of every command, handed to the server as ``LLAMA_RADAR=...`` (the patched library
  reads it when it makes a context), and a slot layout Radar can run in: ``-np N --no-kv-unified`` (one
  KV stream per slot; the server's default of 4 slots in one unified cache is refused by Radar) with
  flash attention on. The launcher checks the server's log that Radar did switch on, and stops if not;
- lifetime: it waits for ``/health``, prints the URL, forwards SIGINT/SIGTERM, kills the server if it
  dies itself (Linux: ``PR_SET_PDEATHSIG``), and exits with the server's status.

Arguments after ``--`` go to llama-server unchanged (``radar-gguf serve -- --metrics --cache-ram 0``).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from .args import add_model_args, add_radar_args, parse_args_and_radar, split_passthrough
from .config import RadarConfig
from .sizes import format_size

DEFAULT_CTX = "8k"  # per slot
DEFAULT_PARALLEL = 4
SERVER_ENV = "RADAR_GGUF_LLAMA_SERVER"  # path of a llama-server to run instead of the package's
SLOT_ALIGN = 256  # llama.cpp rounds each stream's context up to a multiple of this
RADAR_ON = "LLAMA_RADAR: Radar on"  # the library's log line when the environment switched Radar on
RADAR_FAILED = "LLAMA_RADAR: "  # ... and its warning when it could not (followed by the reason)
STOP_GRACE_S = 30
# ggml-rpc's error when a worker is gone (patch 0007): "RPC server H:P: connection lost (command N); its
# layers cannot run any more". The connection is not remade, so every later request would fail.
RPC_LOST = re.compile(r"RPC server (\S+): (.+?) \(command \d+\); its layers cannot run any more")


class LaunchError(Exception):
    """A user's mistake or an environment problem, reported as one line without a traceback."""


# -- what to run ---------------------------------------------------------------------------------------


def find_server() -> Path:
    """The llama-server to run: $RADAR_GGUF_LLAMA_SERVER, else next to $LLAMA_CPP_LIB_PATH's libraries
    (a development build), else the package's ``llama_cpp/bin/llama-server``."""
    from ._lib import bundled_program

    found, cands = bundled_program("llama-server", SERVER_ENV)
    if found:
        return Path(found)
    where = ", ".join(cands) or "the llama_cpp package (not importable)"
    raise LaunchError(
        f"llama-server was not found ({where}). It is built into the package by `pip install .`; "
        f"reinstall, or point {SERVER_ENV} at a llama-server built from the patched tree."
    )


def radar_env(radar: RadarConfig) -> str:
    """The ``LLAMA_RADAR`` value for a config (keys of the parser in native/patches/0003)."""
    if not radar.enabled:
        return "0"
    keys = {
        "score": radar.score_id,
        "budget": radar.token_budget,
        "top_k": radar.top_k,
        "sinks": radar.n_sink,
        "window": radar.n_recent,
        "aspect": f"{radar.aspect:g}",
        "seg_min": radar.seg_len_min,
        "dense_below": radar.dense_below,
        "shared": int(radar.shared_gqa),
        "budget_scale": f"{radar.budget_max_scale:g}",
        "summary": radar.summary_type,
        "rescore": f"{radar.rescore:g}",
        "mass": f"{radar.mass_target:g}",
        "rescore_max": f"{radar.rescore_max:g}",
        "rescore_mass": f"{radar.rescore_mass:g}",
    }
    return ",".join(f"{k}={v}" for k, v in keys.items())


def slot_ctx(ctx: int) -> int:
    """The context each slot gets for a requested ``--ctx`` (llama.cpp's rounding)."""
    return -(-ctx // SLOT_ALIGN) * SLOT_ALIGN


def check_fit(path: Path, info: Any, total_ctx: int, gpu_layers: int, verbose: bool) -> Optional[str]:
    """Why a ``total_ctx``-cell KV cache does not fit (the check ``load()`` makes), or None."""
    from .engine import NO_FIT_CHECK_ENV, _surely_fits, estimate_memory

    if os.environ.get(NO_FIT_CHECK_ENV, "") not in ("", "0") or _surely_fits(info, total_ctx, gpu_layers):
        return None
    return estimate_memory(path, ctx=total_ctx, gpu_layers=gpu_layers, verbose=verbose).problem()


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, before a model is loaded for nothing."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LaunchError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama-server does
        try:
            s.bind(addr)
        except OSError as e:
            raise LaunchError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def gpu_layers(args: argparse.Namespace) -> int:
    """--gpu-layers as given, else 0, or all layers (-1) with --rpc (the default of load())."""
    if args.gpu_layers is not None:
        return args.gpu_layers
    return -1 if args.rpc else 0


def server_argv(exe: Path, model: Path, args: argparse.Namespace, extra: list) -> list:
    from .engine import _default_threads

    threads = str(args.threads or _default_threads())
    argv = [str(exe), "-m", str(model), "-c", str(slot_ctx(args.ctx) * args.parallel)]
    argv += ["-np", str(args.parallel), "--no-kv-unified", "-fa", "on", "--fit", "off"]
    argv += ["--host", args.host, "--port", str(args.port), "-t", threads, "-tb", threads]
    argv += ["-ngl", str(gpu_layers(args)), "--alias", args.alias or model.stem, "--log-colors", "off"]
    if args.rpc:
        argv += ["--rpc", ",".join(args.rpc)]
    if args.tensor_split:
        argv += ["-ts", ",".join(f"{v:g}" for v in args.tensor_split)]
    argv += ["-sm", args.split_mode]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.embeddings:
        argv.append("--embeddings")
    if args.metrics:
        argv.append("--metrics")
    if args.verbose:
        argv += ["-lv", "4"]  # llama.cpp's info lines too (the library's, Radar's among them)
    return argv + extra


# -- the child process ---------------------------------------------------------------------------------


def _die_with_parent() -> Any:
    """A preexec_fn that has the kernel kill the server when this process dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class Server:
    """A running llama-server: its process and its log (kept, shown as the flags say)."""

    def __init__(self, argv: list, env: dict, *, verbose: bool, quiet: bool) -> None:
        self.verbose, self.quiet = verbose, quiet
        self.ready = False
        self.tail: collections.deque = collections.deque(maxlen=60)
        self.radar_on = False
        self.radar_error: Optional[str] = None
        self.address: Optional[str] = None
        self.lost_worker: Optional[str] = None  # "H:P (why)" once an RPC worker is gone
        self.failed = threading.Event()  # set with lost_worker
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us only; we forward it once
            preexec_fn=_die_with_parent(),
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if RADAR_ON in line:
                self.radar_on = True
            elif RADAR_FAILED in line and "unknown key" not in line:
                self.radar_error = line.split(RADAR_FAILED, 1)[1].strip()
            lost = RPC_LOST.search(line)
            if lost and self.lost_worker is None:
                self.lost_worker = f"{lost.group(1)} ({lost.group(2)})"
                self.failed.set()
            if "listening on http" in line and self.address is None:
                self.address = line.rsplit("listening on ", 1)[1].strip()
            if self.verbose or (self.ready and not self.quiet):
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

    def wait_ready(self, host: str, port: int, timeout: float) -> str:
        """Wait until /health answers 200; return the base URL. Raises LaunchError if the server
        exits or does not get ready in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                raise LaunchError(
                    f"llama-server exited with status {self.proc.returncode} while starting:\n"
                    + "\n".join(_errors(self.tail))
                )
            if port == 0 and self.address:
                port = int(self.address.rsplit(":", 1)[1])
            if port:
                url = f"http://{_client_host(host)}:{port}"
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            self.ready = True
                            return url
                except (urllib.error.URLError, OSError, ValueError):
                    pass
            time.sleep(0.2)
        raise LaunchError(f"llama-server did not answer /health within {timeout:g} s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode


def _serve_until_exit_or_lost_worker(server: Server) -> int:
    """Wait for llama-server to exit. A lost RPC worker stops it: the layers on that worker cannot run any
    more, so every later request would fail while /health still said ok. The requests in flight get
    llama-server's error first (a moment's grace); the exit status is then 1."""
    while server.proc.poll() is None:
        if server.failed.wait(timeout=0.5):
            print(
                f"radar_gguf.serve: RPC worker {server.lost_worker} is gone and its layers cannot run any more; "
                "stopping the server (start the worker again, then serve)",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(1.0)
            server.stop()
            return 1
    return server.proc.returncode


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _has_page(url: str) -> bool:
    """Whether the server has its web page (the build embeds it only when it could download it)."""
    req = urllib.request.Request(url + "/", headers={"Accept-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _errors(lines: Any) -> list:
    """The lines of a log worth showing when the server failed: its errors, else the last ones."""
    errs = [ln for ln in lines if " E " in f" {ln} " or "error" in ln.lower() or "failed" in ln.lower()]
    return (errs or list(lines))[-12:]


# -- command line ----------------------------------------------------------------------------------------


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radar-gguf serve",
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to llama-server as they are (llama-server --help lists them).",
    )
    add_model_args(p, ctx_default=DEFAULT_CTX)
    for a in p._actions:
        if a.dest == "ctx":
            a.help = "context of each slot, e.g. 16k (default: %(default)s); the KV cache holds --parallel times it"
    p.add_argument(
        "--parallel",
        "-np",
        type=int,
        default=DEFAULT_PARALLEL,
        help="slots: requests decoded together, each with --ctx tokens of context (default: %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--alias", default=None, help="model id in the API (default: the GGUF file name)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or $LLAMA_API_KEY)")
    p.add_argument(
        "--seed", type=int, default=None, help="sampling seed of requests without one (default: random)"
    )
    p.add_argument(
        "--embeddings", action="store_true", help="serve /v1/embeddings only (llama-server's mode)"
    )
    p.add_argument("--metrics", action="store_true", help="Prometheus metrics at /metrics")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for the model to load")
    p.add_argument("--quiet", action="store_true", help="no server log on stderr once it is ready")
    add_radar_args(p)
    return p


def main(argv: Optional[list] = None) -> int:
    argv, extra = split_passthrough(argv)
    parser = setup_arg_parser()
    args, radar = parse_args_and_radar(parser, argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in [0, 65535]")
    if not 1 <= args.parallel <= 256:
        parser.error("--parallel must be in [1, 256]")
    if args.radar_features != RadarConfig().n_feat:
        parser.error("--radar-features cannot be passed to llama-server (LLAMA_RADAR has no key for it)")
    if args.rpc_timeout is not None and not args.rpc:
        parser.error("--rpc-timeout is given without --rpc workers")
    try:
        return serve(args, radar, extra)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace, radar: RadarConfig, extra: list) -> int:
    from .engine import resolve_model_path
    from .gguf_check import check_gguf
    from .hub import HubError

    exe = find_server()
    try:
        path = resolve_model_path(args.model)
        info = check_gguf(path)
        if args.rpc:
            # the workers hold what is offloaded and llama-server reports their memory errors; here, only
            # check that each one can be used (ggml would abort the server on one that cannot)
            from .rpc import probe

            for ep in args.rpc:
                probe(ep)
            problem = None
        else:
            problem = check_fit(
                path, info, slot_ctx(args.ctx) * args.parallel, gpu_layers(args), args.verbose
            )
    except (HubError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        raise LaunchError(str(e)) from None
    per_slot = slot_ctx(args.ctx)
    if problem:
        raise LaunchError(
            f"{path.name}: {args.parallel} slots x {per_slot} tokens: {problem} (The KV cache holds --ctx x "
            "--parallel tokens: lower either.)"
        )
    check_port(args.host, args.port)

    env = dict(os.environ, LLAMA_RADAR=radar_env(radar))
    if args.rpc:
        from .rpc import TIMEOUT_ENV, answer_timeout

        try:
            env[TIMEOUT_ENV] = (
                f"{answer_timeout(args.rpc_timeout):g}"  # read by ggml's RPC client in the server
            )
        except ValueError as e:
            raise LaunchError(str(e)) from None
    if args.api_key:
        env["LLAMA_API_KEY"] = args.api_key  # not on the command line, where ps shows it
    argv = server_argv(exe, path, args, extra)
    if args.verbose:
        print(f"radar_gguf.serve: LLAMA_RADAR={env['LLAMA_RADAR']} {' '.join(argv)}", file=sys.stderr)
    server = Server(argv, env, verbose=args.verbose, quiet=args.quiet)
    stopping: list = []

    def forward(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if server.proc.poll() is None:
            server.proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        url = server.wait_ready(args.host, args.port, args.start_timeout)
        server.reader.join(timeout=0.5)  # let the reader catch up with the loading log
        # the library warns when LLAMA_RADAR cannot take effect; its "Radar on" is an info line, which
        # llama-server shows at -lv 4 (--verbose) only
        if radar.enabled and (server.radar_error or (args.verbose and not server.radar_on)):
            why = server.radar_error or "the library did not report it"
            raise LaunchError(f"Radar did not switch on in llama-server: {why}; use --no-radar for dense")
        mode = "embeddings" if args.embeddings else f"{args.parallel} slots x {format_size(per_slot)} tokens"
        print(f"radar_gguf.serve: {path.name}, {mode}, {radar.describe()}", file=sys.stderr)
        page = f" (web page: {url}/)" if _has_page(url) else ""
        print(f"listening on {url}/v1{page}", flush=True)
        rc = _serve_until_exit_or_lost_worker(server)
    except (LaunchError, KeyboardInterrupt) as e:
        server.stop()
        if isinstance(e, LaunchError) and not stopping:
            raise
        rc = server.proc.returncode
    finally:
        if server.proc.poll() is None:
            server.stop()
    print(f"radar_gguf.serve: llama-server stopped (status {rc})", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
