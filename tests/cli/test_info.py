"""``dinounet info``: every fixture format and random:tiny, as a table and as JSON."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from napari_dinounet.cli import main

KEYS = ["format", "variant", "embed_dim", "depth", "num_heads", "params", "sha256"]
TINY_PARAMS = 249_856  # the fixtures' model: timm's DINOv3 at width 64, depth 4


@pytest.fixture(scope="module")
def timm_file(dinov3_tiny_dir, tmp_path_factory):
    from napari_dinounet.engine.backbone import load_backbone

    path = tmp_path_factory.mktemp("timm") / "tiny.safetensors"
    save_file(load_backbone(dinov3_tiny_dir / "hf_tiny").vit.state_dict(), path)
    return path


def _info_json(capsys, source) -> dict:
    assert main(["info", str(source), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == KEYS
    return out


def test_official_pth(capsys, dinov3_tiny_dir):
    out = _info_json(capsys, dinov3_tiny_dir / "official_tiny.pth")
    assert out == {
        "format": "official",
        "variant": "tiny",
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 4,
        "params": TINY_PARAMS,
        "sha256": "9c3a1a5bbd0767557d00e4842c5c1418e8882d6031ac416659a85429638d846c",
    }


def test_hf_folder(capsys, dinov3_tiny_dir):
    out = _info_json(capsys, dinov3_tiny_dir / "hf_tiny")
    assert (out["format"], out["variant"], out["num_heads"], out["params"]) == ("hf", "tiny", 4, TINY_PARAMS)
    assert out["sha256"] == "1aacee96b12c54446ae6d480631f47609c973cc37134b7358ff167c9aad04987"  # model.safetensors


def test_timm_file(capsys, timm_file):
    import hashlib

    out = _info_json(capsys, timm_file)
    assert (out["format"], out["variant"], out["embed_dim"], out["params"]) == ("timm", "tiny", 64, TINY_PARAMS)
    assert out["sha256"] == hashlib.sha256(timm_file.read_bytes()).hexdigest()


def test_random_tiny_and_7b(capsys):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        out = _info_json(capsys, "random:tiny")
    assert out == {
        "format": "random",
        "variant": "tiny",
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 4,
        "params": TINY_PARAMS,
        "sha256": None,
    }
    with pytest.warns(UserWarning):
        assert _info_json(capsys, "random:7b")["params"] == 6_716_030_976  # on the meta device: no 27 GB


def test_table_output(capsys, dinov3_tiny_dir):
    assert main(["info", str(dinov3_tiny_dir / "official_tiny.pth")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "format     official",
        "variant    tiny",
        "embed_dim  64",
        "depth      4",
        "num_heads  4",
        "params     249,856",
        "sha256     9c3a1a5bbd0767557d00e4842c5c1418e8882d6031ac416659a85429638d846c",
    ]


def test_bad_source_is_a_message_not_a_traceback(capsys, tmp_path):
    (tmp_path / "readme.pth").write_text("hello")
    assert main(["info", str(tmp_path / "readme.pth")]) == 2
    err = capsys.readouterr().err
    assert "dinounet info: error:" in err and "readme.pth: a text file" in err and "Traceback" not in err
