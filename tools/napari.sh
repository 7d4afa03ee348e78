#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine and open napari with the nuclei sample and the plugin's
# Segment, Fine-tune and Export widgets docked. Arguments go to tools/open_napari.py, e.g.
# `bash tools/napari.sh --screenshot napari.png` (open, dock, save the window, quit; headless: under xvfb-run).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_setup.sh
install_display_libraries
setup_venv all
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  case " $* " in
    *" --screenshot "*) exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/open_napari.py "$@" ;;
    *) echo "no display: run this on a desktop (or over ssh -X), or add --screenshot PATH to run headless" >&2
       exit 2 ;;
  esac
fi
exec .venv/bin/python tools/open_napari.py "$@"
