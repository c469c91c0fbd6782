"""One command for the package: ``radar-gguf {run,serve,summarize,bench,eval,rpc-server} ...``.

The same as ``python -m radar_gguf <command> ...`` and as ``python -m radar_gguf.<command> ...``
(``radar_gguf.lab.eval`` for eval). Each command module has ``setup_arg_parser()`` and ``main(argv)``;
this module only dispatches, importing the chosen one.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

# command -> (module, one-line description)
COMMANDS = {
    "run": ("radar_gguf.run", "chat with a model, or complete one prompt (-p)"),
    "serve": ("radar_gguf.serve", "OpenAI-compatible HTTP server"),
    "summarize": ("radar_gguf.summarize", "summarize files or stdin, map-reduce when too long"),
    "bench": ("radar_gguf.bench", "decode tokens/s at several context depths, Radar vs dense"),
    "eval": ("radar_gguf.lab.eval", "quality against dense attention: ppl, niah, select, sweep, pool"),
    "rpc-server": (
        "radar_gguf.rpc_server",
        "a worker that runs model layers for --rpc clients on other hosts",
    ),
}


def usage() -> str:
    lines = ["usage: radar-gguf COMMAND [ARGS...]   (radar-gguf COMMAND -h for its flags)", "", "commands:"]
    lines += [f"  {name:10s} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "With no command, radar-gguf chats with the bundled model (radar-gguf run)."]
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv.pop(0) if argv else "run"
    if name not in COMMANDS:
        hint = f"; to chat with a model file: radar-gguf run {name}" if not name.startswith("-") else ""
        print(f"radar-gguf: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
