"""engine/names.py: the choice lists argparse and Qt offer without torch agree with the engine's registries."""

from __future__ import annotations

import json
import subprocess
import sys

from napari_dinounet.engine import names


def test_the_engine_registries_use_the_same_names():
    from napari_dinounet.engine.backbone import VARIANTS
    from napari_dinounet.engine.device import DEVICE_CHOICES
    from napari_dinounet.engine.network import SIZES
    from napari_dinounet.engine.projection import PROJECTIONS

    assert tuple(VARIANTS) == names.BACKBONE_SIZES == tuple(SIZES)
    assert tuple(PROJECTIONS) == names.PROJECTIONS
    assert DEVICE_CHOICES == names.DEVICES


def test_the_command_line_offers_the_names():
    from napari_dinounet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    summary = {a.dest: a.choices for a in commands["summary"]._actions}
    train = {a.dest: a.choices for a in commands["train"]._actions}
    assert tuple(summary["size"]) == names.BACKBONE_SIZES
    assert tuple(summary["projection"]) == tuple(train["projection"]) == names.PROJECTIONS


def test_the_choice_lists_need_no_torch():
    """What argparse and the model form import for their choices: torch stays unimported (seconds saved)."""
    script = """
import json, sys
from napari_dinounet.engine import names
from napari_dinounet.cli import build_parser
build_parser()
print(json.dumps(sorted(name for name in ("torch", "timm") if name in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
