#!/usr/bin/env bash
# Create .venv and install hf-lowdata into it, offline-safe and without a CUDA torch download.
#   scripts/setup.sh          the package (runtime)
#   scripts/setup.sh --dev    plus test tools, the optional SetFit baseline and the system
#                             packages the tests use (Fashion-MNIST, Chromium) where apt is available
# torch is installed first as the local CPU wheel (torch==2.13.0): with no torch present, a plain
# "torch" requirement would make pip download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>/dev/null || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi
if [ "$DEV" = 1 ]; then
    if [ -x scripts/system_packages.sh ]; then scripts/system_packages.sh; fi
    "${PIP[@]}" -e ".[dev,setfit]"
else
    "${PIP[@]}" -e .
fi
.venv/bin/python -c "import hf_lowdata, torch; print('hf_lowdata', hf_lowdata.__version__, '| torch', torch.__version__)"
