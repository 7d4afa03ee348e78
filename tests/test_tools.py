"""The README's first command: tools/open_napari.py opens napari with the sample and the three docks.

Runs the launcher as the user's command does (a fresh process, ``--screenshot``) under the display this
test session has (``xvfb-run`` in tools/test.sh), in the existing .venv: no apt, no pip here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _setup_script_lines(name: str) -> list[str]:
    return (ROOT / "tools" / name).read_text().splitlines()


@pytest.mark.gui
def test_launcher_screenshot_shows_the_sample_and_the_three_docks(tmp_path):
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("needs a display: run under xvfb-run (tools/test.sh does)")
    shot = tmp_path / "napari.png"
    env = dict(os.environ)
    # napari's and the plugin's settings in tmp_path: the user's are neither read nor changed
    env["NAPARI_CONFIG"] = str(tmp_path / "napari-settings.yaml")
    env["NAPARI_DINOUNET_SETTINGS_DIR"] = str(tmp_path)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "open_napari.py"), "--screenshot", str(shot)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "docked: Segment, Fine-tune, Export" in run.stdout

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    height, width, _ = pixels.shape
    assert width >= 1200 and height >= 700, (width, height)  # the whole window, not a canvas or a dock
    assert pixels.std() > 20, pixels.std()  # not blank: interface, text and the nuclei image
    # the canvas shows the nuclei sample: many distinct grey levels, not a flat black or a single colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000

    shown = json.loads(shot.with_suffix(".json").read_text())
    assert shown["size"] == [width, height]
    assert shown["layers"] == ["nuclei", "nuclei ground truth"]
    assert [d["name"] for d in shown["docks"]] == ["Segment", "Fine-tune", "Export"]
    assert [d["widget"] for d in shown["docks"]] == ["SegmentWidget", "FineTuneWidget", "ExportWidget"]
    # all three stacked when they fit the screen's height, else tabbed behind Segment: never a window taller
    # than the screen, whose bottom controls would be out of reach
    assert shown["window"][1] <= 1000, (shown["window"], shown["screen"])  # the window asked for, 1600 x 1000
    segment, *others = shown["docks"]
    assert segment["shown"] and segment["height"] > 100, segment
    for dock in others:
        assert dock["shown"] or segment["dock_title"] in dock["tabbed_with"], dock
        assert dock["shown"] != (segment["dock_title"] in dock["tabbed_with"]), dock  # stacked xor a tab
    assert shown["napari_dock_widgets"] == sorted(
        f"{name} (napari-dinounet)" for name in ("Segment", "Fine-tune", "Export")
    )


def test_launcher_refuses_to_run_without_a_display(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "open_napari.py"), "--screenshot", str(tmp_path / "x.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "no display" in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_setup_scripts_share_one_apt_list_and_one_venv_recipe():
    """test.sh, napari.sh and demo.sh source tools/_setup.sh: one list of display packages, one torch pin."""
    setup = (ROOT / "tools" / "_setup.sh").read_text()
    assert "display_packages=(" in setup and "torch==2.14.1 torchvision==0.29.1" in setup
    for name, extra in (("test.sh", "testing"), ("napari.sh", "all"), ("demo.sh", None)):
        lines = _setup_script_lines(name)
        assert "source tools/_setup.sh" in lines, name
        assert not any("apt-get" in line or "pip install" in line or "display_packages=" in line for line in lines)
        assert (f"setup_venv {extra}" if extra else "setup_venv") in lines, name
    assert "install_display_libraries" in _setup_script_lines("napari.sh")
    assert "install_display_libraries" in _setup_script_lines("test.sh")
    napari_sh = (ROOT / "tools" / "napari.sh").read_text()
    assert "tools/open_napari.py" in napari_sh


def test_qt_binding_only_from_the_all_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    qt = ("pyqt", "pyside", "napari[all]", "napari[pyqt", "napari[pyside")
    assert not any(any(q in dep.lower() for q in qt) for dep in project["dependencies"]), project["dependencies"]
    assert any(dep.lower().startswith("napari[pyqt5]") for dep in project["optional-dependencies"]["all"])


def test_readme_first_command_opens_napari():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first_block) == 2, first_block
    assert first_block[0].startswith("bash tools/napari.sh")
    assert first_block[1].startswith("bash tools/test.sh")
    assert "bash tools/demo.sh" in readme  # the headless demo stays, further down
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_block[1].split("#")[0].strip() in ci
