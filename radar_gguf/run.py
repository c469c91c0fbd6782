"""Chat with a GGUF model, or complete one prompt: ``python -m radar_gguf.run [MODEL] [--ctx 64k]``.

Without ``-p`` this is a chat REPL: the model's own chat template, streamed replies, multi-turn
history (the context is reused, not re-prefilled), Ctrl-C stops the current reply, Ctrl-D exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional

from .args import (
    add_model_args,
    add_radar_args,
    add_sampling_args,
    load_from_args,
    parse_args_and_radar,
    positive_int,
)
from .session import SessionError, load_session, save_session
from .sizes import format_size

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


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radar-gguf run", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="complete this prompt and exit ('-' reads stdin)")
    p.add_argument(
        "-n",
        "--max-tokens",
        type=positive_int,
        default=512,
        help="tokens to generate per reply (default: %(default)s)",
    )
    add_sampling_args(p)
    p.add_argument("--system", default=None, help="system prompt for the chat")
    p.add_argument("--raw", action="store_true", help="with -p: no chat template, plain completion")
    add_radar_args(p)
    return p


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
            f"  last step attended {'>= ' if model.radar.mass_target > 0 else ''}{r.n_attended} of {r.n_kv} "
            f"cells ({r.n_seg_selected}/{r.n_seg} segments of "
            f"{r.seg_len}); {r.n_decode_radar} sparse decode steps, {r.n_restructure} restructures"
        )


def _stream(model, gen, out=sys.stdout) -> str:
    text = []
    for r in gen:
        out.write(r.text)
        out.flush()
        text.append(r.text)
    return "".join(text)


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
            line = _clean_text(input(">>> ")) if interactive else _read_line(stdin)
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
                path = _arg_path(arg)
                if not path:
                    print("usage: /save FILE")
                    continue
                try:
                    h = save_session(model, path, history)
                except (SessionError, OSError) as e:  # the conversation stays as it is
                    print(f"error: {e}")
                    continue
                print(
                    f"(saved {len(history)} messages and {h['n_tokens']} tokens of context, "
                    f"{h['state_bytes'] / 2**20:.1f} MiB of state, to {path})"
                )
            elif cmd == "/load":
                path = _arg_path(arg)
                if not path:
                    print("usage: /load FILE")
                    continue
                try:
                    history = load_session(model, path)
                except (SessionError, OSError) as e:
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
                    try:
                        model.set_radar(model.radar.replace(enabled=arg == "on"))
                    except (ValueError, RuntimeError) as e:  # e.g. no Radar kernels for this GPU
                        print(f"error: {e}")
                        continue
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
    return None if line == "" else _clean_text(line)


def _clean_text(text: str) -> str:
    """Bytes that are not UTF-8 (surrogate-escaped by Python's stdin) become U+FFFD instead of an error
    when the text is tokenized."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_stdin_text(stdin=None) -> str:
    """All of stdin as text; ValueError if it is not UTF-8."""
    stdin = stdin if stdin is not None else sys.stdin
    buf = getattr(stdin, "buffer", None)
    if buf is None:
        return stdin.read()
    data = buf.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"stdin is not UTF-8 text (undecodable byte at offset {e.start})") from None


def main(argv: Optional[list] = None) -> int:
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = setup_arg_parser()
    args, radar = parse_args_and_radar(parser, argv)
    from_stdin = args.prompt == "-"
    if from_stdin:
        try:
            args.prompt = _read_stdin_text()
        except ValueError as e:
            parser.error(f"-p -: {e}")
    elif args.prompt is not None:
        args.prompt = _clean_text(args.prompt)  # bytes of argv that are not UTF-8
    if args.system is not None:
        args.system = _clean_text(args.system)
    if args.prompt is not None and not args.prompt.strip():
        parser.error("-p -: stdin is empty, no prompt" if from_stdin else "-p: the prompt is empty")
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
