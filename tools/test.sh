#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine and run the whole test suite headless (Xvfb).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k backbone`.
set -euo pipefail
cd "$(dirname "$0")/.."

display_packages=(xvfb libgl1-mesa-dri libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0
  libdbus-1-3 libfontconfig1)
if ! dpkg -s "${display_packages[@]}" >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${display_packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned to the wheels that install offline here (a CUDA build that also runs on the CPU).
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[testing]"
# lint and format first: cheap, and a style slip should not wait for a 5-minute suite to be reported
.venv/bin/ruff check src tests benchmarks tools
.venv/bin/ruff format --check src tests benchmarks tools
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning (2-core CI)
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -q "$@"
