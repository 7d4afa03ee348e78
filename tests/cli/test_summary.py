"""``dinounet summary``: counts per module, JSON output, a backbone's own size, errors."""

from __future__ import annotations

import json

import pytest

from napari_dinounet.cli import main


def _json(capsys, *argv) -> dict:
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_7b_counts_without_allocating_it(capsys):
    facts = _json(capsys, "--size", "7b", "--projection", "compact", "--classes", "2")
    assert facts["trainable_params"] == 228_967_524  # the paper's Table IV: 228.968M
    modules = {"adapter": 227_084_736, "projection": 779_486, "upsampling": 348_640, "decoder": 754_662}
    assert facts["modules"] == modules
    assert facts["embed_dim"] == 4096 and facts["taps"] == [9, 19, 29, 39]
    assert facts["backbone_params"] > 6_700_000_000


@pytest.mark.parametrize(
    "size, projection, classes, total",
    [("s", "fapm", 2, 6_194_948), ("b", "plain", 2, 11_318_726), ("l", "fapm", 4, 19_969_988 + 2 * 227)],
)
def test_json_totals(capsys, size, projection, classes, total):
    facts = _json(capsys, "--size", size, "--projection", projection, "--classes", str(classes))
    assert facts["trainable_params"] == total == sum(facts["modules"].values())
    assert (facts["size"], facts["projection"], facts["num_classes"]) == (size, projection, classes)


def test_table_output(capsys):
    assert main(["summary", "--size", "s", "--projection", "compact"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "Dino U-Net s, projection compact, 2 classes (D=384, taps 2, 5, 8, 11)"
    assert "total trainable" in lines[5] and lines[5].endswith("5,106,084")
    assert lines[1].split() == ["adapter", "3,698,432"]
    assert "RANDOM" not in captured.err  # counting needs no weights, so no not-pretrained warning


def test_a_backbone_files_own_size(capsys, dinov3_tiny_dir):
    facts = _json(capsys, "--backbone", str(dinov3_tiny_dir / "official_tiny.pth"), "--projection", "plain")
    assert facts["size"] == "tiny" and facts["embed_dim"] == 64
    # plain: 13 D^2 + 2419.5 D + 1,792,384 + 227 nc
    assert facts["trainable_params"] == 13 * 64**2 + 2419.5 * 64 + 1_792_384 + 2 * 227


def test_bad_class_count_is_a_clear_error(capsys):
    assert main(["summary", "--classes", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
