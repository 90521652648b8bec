#!/usr/bin/env bash
# Create .venv and install hf-lowdata into it, offline-safe and without a CUDA torch download.
#   scripts/setup.sh          the package (runtime)
#   scripts/setup.sh --dev    plus test tools, the optional SetFit baseline and the system
#                             packages the tests use (Fashion-MNIST, Chromium) where apt is available
# torch is installed first as the local CPU wheel (torch==2.13.0): with no torch present, a plain
# "torch" requirement would make pip download a multi-GB CUDA build. Another torch version in .venv
# is replaced by it, and the package is installed under a constraint that keeps it (pip would
# otherwise upgrade an older torch to the newest release on the index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

# A .venv whose python cannot run pip (made with --without-pip, or cut short) is rebuilt, not reused.
if ! { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
    if [ -e .venv ]; then echo "setup: .venv has no working python or pip; recreating it" >&2; fi
    "$PYTHON" -m venv --clear .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! "${PIP[@]}" --upgrade pip; then
    echo "setup: could not upgrade pip (see above); going on with the venv's own pip" >&2
fi
# the installed torch's version without a local suffix (2.13.0+cpu -> 2.13.0); empty when none imports
torch_version() {
    .venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true
}
if [ "$(torch_version)" != "$TORCH_VERSION" ]; then
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"  # (also matches a local build, 2.13.0+cpu)
if [ "$DEV" = 1 ]; then
    if [ -x scripts/system_packages.sh ]; then scripts/system_packages.sh; fi
    "${PIP[@]}" -c "$CONSTRAINTS" -e ".[dev,setfit]"
else
    "${PIP[@]}" -c "$CONSTRAINTS" -e .
fi
if [ "$(torch_version)" != "$TORCH_VERSION" ]; then
    echo "setup: .venv has torch $(torch_version) instead of $TORCH_VERSION; delete .venv and run $0 again" >&2
    exit 1
fi
.venv/bin/python -c "import hf_lowdata, torch; print('hf_lowdata', hf_lowdata.__version__, '| torch', torch.__version__)"
