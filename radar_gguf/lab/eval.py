"""Quality of Radar against dense attention: ``radar-gguf eval {ppl,niah,select,sweep,pool} ...``.

``ppl``     long-context perplexity: dense and Radar configs score the same tokens after the same
            prefilled context (``lab.ppl``); on a built-in corpus, several (``--corpus all``), or any text
            (``--text FILE``, ``-`` for stdin). Prefilled contexts are cached on disk across runs.
``pool``    pools ppl records of several windows (``--offset``) and corpora into one delta ± SE.
``niah``    needle in a haystack at several lengths and depths (``lab.niah``).
``select``  selection quality at sampled decode steps: Radar's segments against the oracle (exact attention
            mass), sinks + window and random at the same budget (``lab.selection``).
``sweep``   delta ppl against the bytes each config reads per decode step (``lab.sweep``).

Radar configs are specs ``NAME[:key=value,...]``: ``dense``, or a score name (``meanvar``, ``mean``,
``minmax``, ``rf``, ``oracle``) with RadarConfig fields changed from the defaults, e.g.
``rf:top_k=64,n_recent=1024`` or ``meanvar:token_budget=512``. Records are merged into a JSON list
(``--out``); a markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .niah import add_niah_args, main_niah
from .ppl import add_pool_args, add_ppl_args, main_pool, main_ppl
from .select_eval import add_select_args, main_select
from .sweep import add_sweep_args, main_sweep


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radar-gguf eval",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    sub = p.add_subparsers(dest="task", required=True)
    add_ppl_args(
        sub.add_parser("ppl", help="long-context perplexity, dense vs Radar configs on one prefilled context")
    )
    add_select_args(
        sub.add_parser("select", help="selection quality: Radar's segments vs oracle, window and random")
    )
    add_sweep_args(
        sub.add_parser("sweep", help="join ppl and selection records with bytes read per decode step")
    )
    add_pool_args(
        sub.add_parser("pool", help="pool the ppl records of several windows and corpora into one delta ± SE")
    )
    add_niah_args(sub.add_parser("niah", help="needle in a haystack, dense vs Radar"))
    return p


def main(argv: Optional[list] = None) -> int:
    parser = setup_arg_parser()
    args = parser.parse_args(argv)
    command = "radar-gguf eval " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.task == "ppl":
        return main_ppl(args, parser, command)
    if args.task == "niah":
        return main_niah(args, parser, command)
    if args.task == "select":
        return main_select(args, parser, command)
    if args.task == "sweep":
        return main_sweep(args, parser)
    return main_pool(args, parser)


if __name__ == "__main__":
    sys.exit(main())
