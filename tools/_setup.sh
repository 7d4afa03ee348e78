# Shared set-up steps, sourced by tools/test.sh, tools/napari.sh and tools/demo.sh (not run on its own).
# Each script cds to the repository root before sourcing this file.

# The Xvfb/Qt/OpenGL libraries napari's Qt window needs on a bare Debian/Ubuntu (installed with apt when missing).
display_packages=(xvfb libgl1-mesa-dri libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0
  libdbus-1-3 libfontconfig1)

install_display_libraries() {
  if ! dpkg -s "${display_packages[@]}" >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${display_packages[@]}"
  fi
}

# setup_venv [EXTRA]: create .venv when missing, install torch and the package (with its EXTRA, if given).
setup_venv() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # torch first, pinned to the wheels that install offline here (a CUDA build that also runs on the CPU).
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  if [ -n "${1:-}" ]; then
    .venv/bin/pip install -q -e ".[$1]"
  else
    .venv/bin/pip install -q -e .
  fi
}
