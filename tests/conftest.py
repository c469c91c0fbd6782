"""Shared fixtures: the bundled model (assembled once per cache) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: more than ~10 s on 2 CPU cores (long prefills, long sessions, subprocess runs of the model);"
        ' deselect with -m "not slow" for a quick loop (CI runs everything)',
    )


@pytest.fixture(scope="session")
def model_path() -> Path:
    from radar_gguf.models import default_model_path

    return default_model_path(progress=False)


@pytest.fixture(scope="session")
def essays_available() -> bool:
    from radar_gguf.lab.corpus import CorpusNotAvailable, essays_text

    try:
        essays_text()
    except CorpusNotAvailable:
        return False
    return True


# python -c program: runs radar_gguf.run with the arguments given, then reports the process's peak RSS on
# stderr as "maxrss_kib=N". VmHWM, not ru_maxrss: a child's ru_maxrss starts at the RSS its parent had
# when it forked (pytest's, with models loaded), VmHWM belongs to the program exec'd.
RUN_WITH_PEAK_RSS = (
    "import runpy, sys\n"
    "try:\n"
    "    runpy.run_module('radar_gguf.run', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    hwm = next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))\n"
    "    sys.stderr.write(f'\\nmaxrss_kib={hwm}\\n')\n"
)


def peak_rss_kib(stderr: str) -> int:
    """The peak RSS a RUN_WITH_PEAK_RSS child reported."""
    return int(stderr.rsplit("maxrss_kib=", 1)[1].split()[0])


def run_cli(
    *args: str,
    input: str | None = None,
    timeout: float = 300,
    env: dict | None = None,
    module: str = "radar_gguf.run",
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in a subprocess, as a user would."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        cwd=REPO,
    )
