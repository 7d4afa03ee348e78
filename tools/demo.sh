#!/usr/bin/env bash
# Set up a virtual environment and run the demo: train on the bundled nuclei sample, report Dice vs Otsu.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e .
.venv/bin/dinounet demo --out demo_output "$@"
