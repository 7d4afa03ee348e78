#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine and run the whole test suite headless (Xvfb).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k backbone`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_setup.sh
install_display_libraries
setup_venv testing
# lint and format first: cheap, and a style slip should not wait for a 5-minute suite to be reported
.venv/bin/ruff check src tests benchmarks tools
.venv/bin/ruff format --check src tests benchmarks tools
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning (2-core CI)
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -q "$@"
