"""Chat with a GGUF model, or complete one prompt: ``python -m radar_gguf.run [MODEL] [--ctx 64k]``.

Without ``-p`` this is a chat REPL: the model's own chat template, streamed replies, multi-turn
history (the context is reused, not re-prefilled), Ctrl-C stops the current reply, Ctrl-D exits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .config import SCORES, RadarConfig
from .sizes import argparse_size, format_size

DEFAULT_CTX = "8k"
REPL_HELP = """commands:
  /reset          forget the conversation
  /stats          prompt and decode tokens/s, context fill, Radar counters
  /radar on|off   switch Radar attention (dense when off)
  /ctx            context size and fill
  /help           this text
  Ctrl-C stops the current reply; Ctrl-D (or /exit) quits"""


def add_radar_args(parser: argparse.ArgumentParser) -> None:
    """Radar flags shared by run, summarize, bench and eval."""
    d = RadarConfig()
    g = parser.add_argument_group("Radar")
    g.add_argument("--radar", dest="radar", action="store_true", default=True, help="use Radar at decode (default)")
    g.add_argument("--no-radar", dest="radar", action="store_false", help="dense attention only")
    g.add_argument("--radar-score", choices=SCORES, default=d.score, help="segment score (default: %(default)s)")
    g.add_argument("--radar-budget", type=int, default=d.token_budget, help="tokens selected per step (default: %(default)s)")
    g.add_argument("--radar-top-k", type=int, default=d.top_k, help="segments per step; overrides --radar-budget")
    g.add_argument("--radar-window", type=int, default=d.n_recent, help="recent tokens always attended (default: %(default)s)")
    g.add_argument("--radar-sinks", type=int, default=d.n_sink, help="leading tokens always attended (default: %(default)s)")
    g.add_argument("--radar-aspect", type=float, default=d.aspect, help="segment length sqrt(t)/aspect (default: %(default)s)")
    g.add_argument("--radar-features", type=int, default=d.n_feat, help="random features for --radar-score rf")
    g.add_argument("--radar-dense-below", type=argparse_size, default=d.dense_below,
                   help="stay dense below this many tokens (default: %(default)s)")
    g.add_argument("--radar-shared-gqa", action="store_true", help="one selection per KV head")


def radar_from_args(args: argparse.Namespace) -> RadarConfig:
    return RadarConfig(
        enabled=args.radar, score=args.radar_score, token_budget=args.radar_budget, top_k=args.radar_top_k,
        n_recent=args.radar_window, n_sink=args.radar_sinks, aspect=args.radar_aspect, n_feat=args.radar_features,
        dense_below=args.radar_dense_below, shared_gqa=args.radar_shared_gqa,
    ).validate()


def add_model_args(parser: argparse.ArgumentParser, ctx_default: str = DEFAULT_CTX) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="a .gguf file, a Hugging Face spec (user/repo:Q4_K_M), or nothing for the bundled model")
    parser.add_argument("--ctx", type=argparse_size, default=argparse_size(ctx_default),
                        help="context length, e.g. 32768, 64k, 1m (default: %(default)s)")
    parser.add_argument("--gpu-layers", "-ngl", type=int, default=0, help="layers to offload to the GPU (-1: all)")
    parser.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m radar_gguf.run", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="complete this prompt and exit ('-' reads stdin)")
    p.add_argument("-n", "--max-tokens", type=int, default=512, help="tokens to generate per reply (default: %(default)s)")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 is greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--system", default=None, help="system prompt for the chat")
    p.add_argument("--raw", action="store_true", help="with -p: no chat template, plain completion")
    add_radar_args(p)
    return p


def _load(args: argparse.Namespace):
    from .engine import load

    return load(args.model, ctx=args.ctx, radar=radar_from_args(args), gpu_layers=args.gpu_layers,
                threads=args.threads, seed=args.seed, verbose=args.verbose)


def _print_stats(model) -> None:
    s = model.stats()
    r = model.radar_stats()
    print(f"prompt: {s['prompt_tokens']} tokens at {s['prompt_tps']:.1f} tok/s | "
          f"decode: {s['generation_tokens']} tokens at {s['generation_tps']:.1f} tok/s | "
          f"context: {s['context_tokens']}/{s['context_size']} ({100 * s['context_tokens'] / s['context_size']:.1f}%)")
    print(f"radar: {model.radar.describe()}")
    if r.n_decode_radar:
        print(f"  last step attended {r.n_attended} of {r.n_kv} cells ({r.n_seg_selected}/{r.n_seg} segments of "
              f"{r.seg_len}); {r.n_decode_radar} sparse decode steps, {r.n_restructure} restructures")


def _stream(model, gen, out=sys.stdout) -> str:
    text = []
    for r in gen:
        out.write(r.text)
        out.flush()
        text.append(r.text)
    return "".join(text)


def repl(model, args: argparse.Namespace, stdin=sys.stdin, out=sys.stdout) -> int:
    """The chat loop. Returns the exit status."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = list(system)
    interactive = stdin.isatty()
    if interactive:
        print(f"radar_gguf chat: {model.path.name}, context {format_size(model.ctx)}; {model.radar.describe()}.")
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
            if cmd in ("/exit", "/quit", "/bye"):
                return 0
            if cmd == "/help":
                print(REPL_HELP)
            elif cmd == "/reset":
                history = list(system)
                model.reset()
                print("(conversation cleared)")
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
        history.append({"role": "user", "content": line})
        reply = []
        try:
            for r in model.stream_chat(history, max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p):
                out.write(r.text)
                out.flush()
                reply.append(r.text)
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except ValueError as e:  # e.g. the conversation outgrew the context
            history.pop()
            print(f"\nerror: {e}\n(/reset starts over)")
            continue
        out.write("\n")
        out.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def _read_line(stdin) -> Optional[str]:
    line = stdin.readline()
    return None if line == "" else line


def main(argv: Optional[list] = None) -> int:
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    try:
        radar_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    try:
        model = _load(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with model:
        if args.prompt is None:
            return repl(model, args)
        try:
            if args.raw:
                gen = model.stream_generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temp,
                                            top_p=args.top_p)
            else:
                msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
                    {"role": "user", "content": args.prompt}]
                gen = model.stream_chat(msgs, max_tokens=args.max_tokens, temperature=args.temp, top_p=args.top_p)
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
