"""Chat with a GGUF model, or complete one prompt: ``python -m radar_gguf.run [MODEL] [--ctx 64k]``.

Without ``-p`` this is a chat REPL: the model's own chat template, streamed replies, multi-turn
history (the context is reused, not re-prefilled), Ctrl-C stops the current reply, Ctrl-D exits.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Optional

from .config import SCORES, SUMMARY_TYPES, RadarConfig
from .sizes import argparse_size, format_size

DEFAULT_CTX = "8k"
REPL_HELP = """commands:
  /reset          forget the conversation (keeps the system prompt)
  /system [TEXT]  show or set the system prompt ('/system -' removes it)
  /save FILE      save the conversation with its context (KV cache) to FILE
  /load FILE      resume a conversation saved with /save, without re-reading it
  /stats          prompt and decode tokens/s, context fill, Radar counters
  /radar on|off   switch Radar attention (dense when off)
  /ctx            context size and fill
  /help           this text
  Ctrl-C stops the current reply; Ctrl-D (or /exit) quits"""


def add_radar_args(parser: argparse.ArgumentParser) -> None:
    """Radar flags shared by run, summarize, bench and eval."""
    d = RadarConfig()
    g = parser.add_argument_group("Radar")
    g.add_argument(
        "--radar", dest="radar", action="store_true", default=True, help="use Radar at decode (default)"
    )
    g.add_argument("--no-radar", dest="radar", action="store_false", help="dense attention only")
    g.add_argument(
        "--radar-score", choices=SCORES, default=d.score, help="segment score (default: %(default)s)"
    )
    g.add_argument(
        "--radar-budget",
        type=int,
        default=d.token_budget,
        help="tokens selected per step (default: %(default)s)",
    )
    g.add_argument(
        "--radar-top-k", type=int, default=d.top_k, help="segments per step; overrides --radar-budget"
    )
    g.add_argument(
        "--radar-window",
        type=int,
        default=d.n_recent,
        help="recent tokens always attended (default: %(default)s)",
    )
    g.add_argument(
        "--radar-sinks",
        type=int,
        default=d.n_sink,
        help="leading tokens always attended (default: %(default)s)",
    )
    g.add_argument(
        "--radar-aspect",
        type=float,
        default=d.aspect,
        help="segment length sqrt(t)/aspect (default: %(default)s)",
    )
    g.add_argument(
        "--radar-features", type=int, default=d.n_feat, help="random features for --radar-score rf"
    )
    g.add_argument(
        "--radar-dense-below",
        type=argparse_size,
        default=d.dense_below,
        help="stay dense below this many tokens (default: -1 = by device, 4k on the CPU, 16k on a GPU)",
    )
    g.add_argument("--radar-shared-gqa", action="store_true", help="one selection per KV head")
    g.add_argument(
        "--radar-summary-type",
        choices=sorted(SUMMARY_TYPES),
        default=d.summary_type,
        help="storage of the segment summaries; f16 halves the bytes scored per step (default: %(default)s)",
    )


def radar_from_args(args: argparse.Namespace) -> RadarConfig:
    return RadarConfig(
        enabled=args.radar,
        score=args.radar_score,
        token_budget=args.radar_budget,
        top_k=args.radar_top_k,
        n_recent=args.radar_window,
        n_sink=args.radar_sinks,
        aspect=args.radar_aspect,
        n_feat=args.radar_features,
        dense_below=args.radar_dense_below,
        shared_gqa=args.radar_shared_gqa,
        summary_type=args.radar_summary_type,
    ).validate()


def add_model_args(
    parser: argparse.ArgumentParser, ctx_default: str = DEFAULT_CTX, positional: bool = True
) -> None:
    """MODEL (positional, or ``-m/--model`` with ``positional=False``), --ctx, --gpu-layers, --threads, --verbose."""
    model_help = "a .gguf file, a Hugging Face spec (user/repo:Q4_K_M), or nothing for the bundled model"
    if positional:
        parser.add_argument("model", nargs="?", default=None, help=model_help)
    else:
        parser.add_argument("-m", "--model", default=None, help=model_help)
    parser.add_argument(
        "--ctx",
        type=argparse_size,
        default=argparse_size(ctx_default),
        help="context length, e.g. 32768, 64k, 1m (default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-layers", "-ngl", type=int, default=0, help="layers to offload to the GPU (-1: all)"
    )
    parser.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m radar_gguf.run", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="complete this prompt and exit ('-' reads stdin)")
    p.add_argument(
        "-n",
        "--max-tokens",
        type=int,
        default=512,
        help="tokens to generate per reply (default: %(default)s)",
    )
    p.add_argument(
        "--temp", type=float, default=0.0, help="sampling temperature; 0 is greedy (default: %(default)s)"
    )
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--system", default=None, help="system prompt for the chat")
    p.add_argument("--raw", action="store_true", help="with -p: no chat template, plain completion")
    add_radar_args(p)
    return p


def parse_args_and_radar(parser: argparse.ArgumentParser, argv: Optional[list]) -> tuple:
    """Parse ``argv``; a Radar flag out of range is a usage error naming the parameter (exit 2)."""
    args = parser.parse_args(argv)
    try:
        return args, radar_from_args(args)
    except ValueError as e:
        parser.error(str(e))


def load_from_args(args: argparse.Namespace, radar: Optional[RadarConfig] = None):
    """Load the model the shared flags name; on a bad model file, print the error and return None."""
    from .engine import load

    try:
        return load(
            args.model,
            ctx=args.ctx,
            radar=radar or radar_from_args(args),
            gpu_layers=args.gpu_layers,
            threads=args.threads,
            seed=getattr(args, "seed", 0),
            verbose=args.verbose,
        )
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _print_stats(model) -> None:
    s = model.stats()
    r = model.radar_stats()
    print(
        f"prompt: {s['prompt_tokens']} tokens at {s['prompt_tps']:.1f} tok/s | "
        f"decode: {s['generation_tokens']} tokens at {s['generation_tps']:.1f} tok/s | "
        f"context: {s['context_tokens']}/{s['context_size']} ({100 * s['context_tokens'] / s['context_size']:.1f}%)"
    )
    print(f"radar: {model.radar.describe()}")
    if r.n_decode_radar:
        print(
            f"  last step attended {r.n_attended} of {r.n_kv} cells ({r.n_seg_selected}/{r.n_seg} segments of "
            f"{r.seg_len}); {r.n_decode_radar} sparse decode steps, {r.n_restructure} restructures"
        )


def _stream(model, gen, out=sys.stdout) -> str:
    text = []
    for r in gen:
        out.write(r.text)
        out.flush()
        text.append(r.text)
    return "".join(text)


def chat_tokens(model, messages) -> tuple[list[int], list[str]]:
    """The token ids ``model.stream_chat(messages)`` prefills, and the chat template's stop strings.

    For front ends that need the prompt's length first (fit checks, usage counts, chunked prefill):
    ``model.stream_generate(tokens, stop=stops, ...)`` then generates exactly what ``stream_chat`` would.
    """
    return model.chat_tokens(messages)


# -- conversation files (/save, /load) -----------------------------------------------------------
#
# Layout: 8-byte magic, u32 format version, u64 header length, the header (UTF-8 JSON: model identity,
# context size, history, token count, state size and checksum), the context's token ids (int32
# little-endian), then llama.cpp's context state (llama_state_get_data: KV cache and last logits).
# No pickle: loading a file never runs code from it.

SESSION_MAGIC = b"RGGUFSES"
SESSION_VERSION = 1
_SESSION_PREFIX = struct.Struct("<8sIQ")
_MAX_HEADER = 64 << 20


class SessionError(ValueError):
    """A conversation file that cannot be saved or loaded here; the message says why."""


def model_fingerprint(path: Path) -> dict:
    """Identity of a GGUF file: its name, size and the sha256 of its first 4 MiB (header and metadata)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
    return {"file": path.name, "size": path.stat().st_size, "sha256_head": h.hexdigest()}


def save_session(model, path: os.PathLike, history: list) -> dict:
    """Write the conversation ``history`` and the context holding it (KV cache included) to ``path``."""
    from . import __version__, _lib

    C = _lib.bindings().llama_cpp
    llama = model.llama
    n_tokens = int(llama.n_tokens)
    size = int(C.llama_state_get_size(llama.ctx))
    buf = (ctypes.c_uint8 * size)()
    n_bytes = int(C.llama_state_get_data(llama.ctx, buf, size))
    if n_bytes > size:
        raise SessionError("llama.cpp returned more state than it announced; not saved")
    state = memoryview(buf).cast("B")[:n_bytes]
    tokens = llama.input_ids[:n_tokens].astype("<i4").tobytes()
    header = {
        "format": "radar_gguf conversation",
        "radar_gguf": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_fingerprint(model.path),
        "ctx": model.ctx,
        "n_tokens": n_tokens,
        "state_bytes": n_bytes,
        "state_sha256": hashlib.sha256(state).hexdigest(),
        "radar": model.radar.describe(),
        "history": list(history),
    }
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    path = Path(path).expanduser()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_SESSION_PREFIX.pack(SESSION_MAGIC, SESSION_VERSION, len(head)))
            f.write(head)
            f.write(tokens)
            f.write(state)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SessionError(f"cannot write {path}: {e.strerror or e}") from None
    return header


def read_session_header(path: os.PathLike) -> tuple[dict, int]:
    """The header of a conversation file and the offset of its token ids; SessionError if it is not one."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            prefix = f.read(_SESSION_PREFIX.size)
            if len(prefix) < _SESSION_PREFIX.size or not prefix.startswith(SESSION_MAGIC):
                raise SessionError(f"{path} is not a radar_gguf conversation file (saved with /save)")
            _, version, n_head = _SESSION_PREFIX.unpack(prefix)
            if version != SESSION_VERSION:
                raise SessionError(
                    f"{path} is a version {version} conversation file; this radar_gguf reads "
                    f"version {SESSION_VERSION}"
                )
            if n_head > _MAX_HEADER:
                raise SessionError(f"{path} is damaged (header of {n_head} bytes)")
            raw = f.read(n_head)
    except FileNotFoundError:
        raise SessionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SessionError(f"{path} is a directory") from None
    except OSError as e:
        raise SessionError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        _ = (
            header["model"]["sha256_head"],
            int(header["ctx"]),
            int(header["n_tokens"]),
            int(header["state_bytes"]),
            list(header["history"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise SessionError(f"{path} is damaged (unreadable header)") from None
    return header, _SESSION_PREFIX.size + n_head


def load_session(model, path: os.PathLike) -> list:
    """Restore a conversation saved by :func:`save_session` into ``model``'s context; return its history.

    Refuses (SessionError) a file saved with another model or context size; the context is left as
    it was in that case. A damaged file leaves the context empty.
    """
    import numpy as np

    from . import _lib

    path = Path(path).expanduser()
    header, offset = read_session_header(path)
    saved, here = header["model"], model_fingerprint(model.path)
    if (saved.get("size"), saved.get("sha256_head")) != (here["size"], here["sha256_head"]):
        raise SessionError(
            f"{path} was saved with the model {saved.get('file')} ({saved.get('size')} bytes); "
            f"this chat runs {here['file']} ({here['size']} bytes). Load it with that model."
        )
    if int(header["ctx"]) != model.ctx:
        raise SessionError(
            f"{path} was saved with a {format_size(int(header['ctx']))} context; this chat has "
            f"{format_size(model.ctx)}. Restart with --ctx {format_size(int(header['ctx']))}."
        )
    n_tokens, n_bytes = int(header["n_tokens"]), int(header["state_bytes"])
    if not 0 <= n_tokens <= model.ctx:
        raise SessionError(f"{path} is damaged ({n_tokens} tokens in a {model.ctx}-token context)")
    with open(path, "rb") as f:
        f.seek(offset)
        tokens = np.frombuffer(f.read(4 * n_tokens), dtype="<i4")
        state = bytearray(n_bytes)
        got = f.readinto(state)
    if len(tokens) != n_tokens or got != n_bytes:
        raise SessionError(f"{path} is truncated")
    if hashlib.sha256(state).hexdigest() != header.get("state_sha256"):
        raise SessionError(f"{path} is damaged (state checksum mismatch)")

    C = _lib.bindings().llama_cpp
    llama = model.llama
    model.reset()
    buf = (ctypes.c_uint8 * n_bytes).from_buffer(state)
    if int(C.llama_state_set_data(llama.ctx, buf, n_bytes)) != n_bytes:
        model.reset()
        raise SessionError(f"llama.cpp could not restore the context from {path}; the context is now empty")
    llama.input_ids[:n_tokens] = tokens
    llama.n_tokens = n_tokens
    return [dict(m) for m in header["history"]]


def _status_line(r, ctx: int) -> str:
    return (
        f"[context {r.context_tokens}/{ctx} ({100 * r.context_tokens / ctx:.0f}%) | "
        f"prompt {r.prompt_tokens} tok, {r.prompt_tps:.0f} tok/s | "
        f"reply {r.generation_tokens} tok, {r.generation_tps:.1f} tok/s]"
    )


def _arg_path(arg: str) -> str:
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        arg = arg[1:-1]
    return arg


def repl(model, args: argparse.Namespace, stdin=sys.stdin, out=sys.stdout) -> int:
    """The chat loop. Returns the exit status."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    system: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = list(system)
    interactive = stdin.isatty()
    dim = ("\033[2m", "\033[0m") if interactive and out.isatty() else ("", "")
    if interactive:
        print(
            f"radar_gguf chat: {model.path.name}, context {format_size(model.ctx)}; {model.radar.describe()}."
        )
        print("Type /help for commands, Ctrl-D to quit.")
    while True:
        try:
            line = input(">>> ") if interactive else _read_line(stdin)
        except EOFError:
            if interactive:
                print()
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /exit quits)")
            continue
        if line is None:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            if cmd in ("/exit", "/quit", "/bye"):
                return 0
            if cmd == "/help":
                print(REPL_HELP)
            elif cmd == "/reset":
                history = list(system)
                model.reset()
                print("(conversation cleared)")
            elif cmd == "/system":
                if not arg:
                    print(f"system prompt: {system[0]['content']}" if system else "(no system prompt)")
                    continue
                system = [] if arg == "-" else [{"role": "system", "content": arg}]
                history = system + [m for m in history if m["role"] != "system"]
                print("(system prompt removed)" if arg == "-" else "(system prompt set)")
            elif cmd == "/save":
                if not arg:
                    print("usage: /save FILE")
                    continue
                try:
                    h = save_session(model, _arg_path(arg), history)
                except SessionError as e:
                    print(f"error: {e}")
                    continue
                print(
                    f"(saved {len(history)} messages and {h['n_tokens']} tokens of context, "
                    f"{h['state_bytes'] / 2**20:.1f} MiB of state, to {_arg_path(arg)})"
                )
            elif cmd == "/load":
                if not arg:
                    print("usage: /load FILE")
                    continue
                try:
                    history = load_session(model, _arg_path(arg))
                except SessionError as e:
                    print(f"error: {e}")
                    continue
                system = [m for m in history[:1] if m.get("role") == "system"]
                n_turns = sum(m.get("role") == "user" for m in history)
                print(
                    f"(loaded {n_turns} turn{'' if n_turns == 1 else 's'}; {model.n_past} tokens of context "
                    "restored, nothing re-read)"
                )
            elif cmd == "/stats":
                _print_stats(model)
            elif cmd == "/ctx":
                print(f"context: {model.n_past}/{model.ctx} tokens")
            elif cmd == "/radar":
                if arg not in ("on", "off"):
                    print("usage: /radar on|off")
                else:
                    model.set_radar(model.radar.replace(enabled=arg == "on"))
                    print(f"({model.radar.describe()})")
            else:
                print(f"unknown command {cmd}; /help lists them")
            continue
        history, last = chat_turn(
            model, history, line, max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p, out=out
        )
        if interactive and last is not None:
            out.write(f"{dim[0]}{_status_line(last, model.ctx)}{dim[1]}\n")
        out.flush()


def chat_turn(
    model,
    history: list,
    line: str,
    *,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 0.95,
    keep: float = 0.5,
    out=sys.stdout,
) -> tuple:
    """One REPL turn: the user's ``line``, the streamed reply; returns (the new history, last response).

    Context shift: when the conversation and ``max_tokens`` (at most a quarter of the context) no
    longer fit, the oldest turns are dropped until it fills at most ``keep`` of the context
    (``Model.fit_chat``: the system prompt stays) and a note says so. Ctrl-C stops the reply and keeps what was said so far; Ctrl-C before the reply began
    (during prefill) forgets the turn. A turn that cannot fit leaves the history as it was.
    """
    reply: list = []
    last = None
    try:
        messages, dropped = model.fit_chat(
            history + [{"role": "user", "content": line}], reserve=min(max_tokens, model.ctx // 4), keep=keep
        )
        if dropped:
            out.write(f"(context full: dropped the {dropped} oldest messages; the system prompt is kept)\n")
        for r in model.stream_chat(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p):
            out.write(r.text)
            out.flush()
            reply.append(r.text)
            last = r
    except KeyboardInterrupt:
        out.write(" [stopped]")
        if last is None:  # stopped before the reply began: the turn is forgotten
            out.write("\n")
            return history, None
    except ValueError as e:  # the system prompt and this message alone do not fit
        out.write(f"error: {e}\n")
        return history, None
    out.write("\n")
    return messages + [{"role": "assistant", "content": "".join(reply)}], last


def _read_line(stdin) -> Optional[str]:
    line = stdin.readline()
    return None if line == "" else line


def main(argv: Optional[list] = None) -> int:
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args, radar = parse_args_and_radar(setup_arg_parser(), argv)
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    model = load_from_args(args, radar)
    if model is None:
        return 1
    with model:
        if args.prompt is None:
            return repl(model, args)
        try:
            if args.raw:
                gen = model.stream_generate(
                    args.prompt, max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p
                )
            else:
                msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
                    {"role": "user", "content": args.prompt}
                ]
                gen = model.stream_chat(
                    msgs, max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p
                )
            _stream(model, gen)
            print()
        except KeyboardInterrupt:
            print("\n[interrupted]")
            return 130
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.verbose:
            _print_stats(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
