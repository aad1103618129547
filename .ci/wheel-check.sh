#!/usr/bin/env bash
# What `pip install dicomrelay` gives a user: build the wheel, install it with
# plain pip and no extras into a fresh virtual environment, and run the CLI
# and a short load test there. A run-time import that is not a declared
# dependency fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d "${TMPDIR:-/tmp}/dicomrelay-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build"
"$work/build/bin/python" -m pip install -q 'maturin>=1.7,<2'
"$work/build/bin/maturin" build --release --quiet --out "$work/dist" >/dev/null

python3 -m venv "$work/user"
"$work/user/bin/python" -m pip install -q "$work"/dist/dicomrelay-*.whl
cd "$work"  # away from the source tree, so only the installed package is found
"$work/user/bin/dicomrelay" --help >/dev/null
"$work/user/bin/dicomrelay" loadtest --count 200
echo "wheel-check: the wheel installs without extras and runs dicomrelay loadtest"
