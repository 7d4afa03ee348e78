"""benchmarks/gpu_check.py keeps working where no GPU is: its --dry-run runs every part at tiny sizes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dry_run_exercises_every_part_and_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "gpu_check", raising=False)
    import gpu_check

    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--dry-run", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["device"] == "cpu (dry run)"

    agreement = result["bf16_agreement"]
    assert 0 < agreement["logits_max_relative_difference"] < 0.2  # bf16 rounds; it does not break the network
    assert agreement["tile_labels_agree"] > 0.9 and agreement["prediction_labels_agree"] > 0.9
    assert agreement["prediction_image"] == [64, 128]

    (row,) = result["throughput"]
    assert row["network"] == "tiny" and row["tiles_per_second"] > 0 and row["backbone_tflop_per_batch"] > 0
    assert row["peak_bf16_tflops"] is None  # no GPU, no peak

    plain, cached = result["finetune"]
    assert (plain["cached_features"], cached["cached_features"]) == (False, True)
    assert plain["steps_per_second"] > 0 and cached["steps_per_second"] > 0 and cached["cache_seconds"] > 0

    assert result["torchrun_smoke"]["steps"] == [3]


def test_peaks_are_found_by_device_name(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    assert gpu_check.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_bf16_tflops("Some Future GPU") is None
