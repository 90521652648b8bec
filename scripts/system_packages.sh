#!/usr/bin/env bash
# System packages the tests use, from Debian (called by scripts/setup.sh --dev):
#   dataset-fashion-mnist  Fashion-MNIST images for the vision tests and benchmark
#   chromium               headless browser for the demo's end-to-end test (driven by Playwright)
# Skipped, with a note, where apt-get is unavailable or we are not root; tests that need a package
# then fail with a message naming it.
set -uo pipefail
PACKAGES=(dataset-fashion-mnist chromium)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: cannot install ${missing[*]} (need root and apt-get); install them to run every test" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    echo "note: apt-get could not install ${missing[*]}" >&2
    exit 0
}
