#!/usr/bin/env bash
# Set up a virtual environment and run the headless demo: train on the bundled nuclei sample, report Dice vs Otsu.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_setup.sh
setup_venv
.venv/bin/dinounet demo --out demo_output "$@"
