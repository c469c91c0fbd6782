"""``python -m radar_gguf <command> ...``: the same as the ``radar-gguf`` command."""

import sys

from .cli import main

sys.exit(main())
