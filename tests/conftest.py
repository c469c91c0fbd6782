"""Shared fixtures: the bundled model (assembled once per cache) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_path() -> Path:
    from radar_gguf.models import default_model_path

    return default_model_path(progress=False)


@pytest.fixture(scope="session")
def essays_available() -> bool:
    from radar_gguf.corpus import CorpusNotAvailable, essays_text

    try:
        essays_text()
    except CorpusNotAvailable:
        return False
    return True


def run_cli(*args: str, input: str | None = None, timeout: float = 300, env: dict | None = None,
            module: str = "radar_gguf.run") -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in a subprocess, as a user would."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=REPO)
