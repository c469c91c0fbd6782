"""A worker for ``--rpc`` clients: ``radar-gguf rpc-server --host 0.0.0.0 --port 50052``.

It runs ggml's ``ggml-rpc-server``, built from the same patched tree into the package (it has the Radar
ops), in place of this process: signals reach it directly and its exit status is this command's. The
worker holds the layers a client places on it, their KV cache and Radar summaries, and runs their part
of each decode step. It serves one client at a time and has no authentication: bind it to a private
network only (docs/ops.md, "Several machines").

Arguments after ``--`` go to ggml-rpc-server unchanged.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Optional

from .args import positive_int, split_passthrough
from .rpc import DEFAULT_PORT, RpcError, find_worker


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radar-gguf rpc-server",
        description="Run a worker that holds and runs model layers for `--rpc` clients (ggml's RPC backend).",
        epilog="Arguments after -- go to ggml-rpc-server as they are.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    p.add_argument(
        "--threads", "-t", type=positive_int, default=None, help="CPU threads (default: all cores)"
    )
    p.add_argument(
        "--device",
        "-d",
        default=None,
        help="comma-separated devices to serve (default: every device, e.g. CUDA0)",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="keep received weights on disk, so a client's next load sends less",
    )
    return p


def worker_argv(exe: str, args: argparse.Namespace, extra: list) -> list:
    from .engine import _default_threads

    argv = [
        exe,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--threads",
        str(args.threads or _default_threads()),
    ]
    if args.device:
        argv += ["--device", args.device]
    if args.cache:
        argv.append("--cache")
    return argv + extra


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Optional[list] = None) -> int:
    argv, extra = split_passthrough(argv)
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    from .serve import LaunchError, check_port

    try:
        exe = find_worker()
        check_port(args.host, args.port)
    except (RpcError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not _is_loopback(args.host):
        print(
            f"radar_gguf.rpc_server: listening on {args.host}: any client that reaches this port can run "
            "graphs here; keep it on a private network",
            file=sys.stderr,
        )
    cmd = worker_argv(str(exe), args, extra)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
