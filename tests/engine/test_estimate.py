"""The duration estimate Fine-tune shows before Start: the measured table, interpolation and wording."""

from __future__ import annotations

import pytest

from napari_dinounet.engine.estimate import CPU_SECONDS, cpu_run_estimate, format_duration


def run(**kwargs):
    options = {"steps": 100, "patch_size": 256, "batch_size": 2, "cache_features": False, "checkpoints": 0}
    return cpu_run_estimate(**{**options, **kwargs})


def test_measured_sizes_give_the_table_and_others_lie_between():
    assert run().steps_s == pytest.approx(100 * CPU_SECONDS[256][0])
    assert run(cache_features=True).steps_s == pytest.approx(100 * CPU_SECONDS[256][1])
    between = run(patch_size=192).steps_s
    assert run(patch_size=128).steps_s < between < run(patch_size=256).steps_s
    assert run(patch_size=1024).steps_s > 4 * run(patch_size=512).steps_s  # extrapolated, growing with pixels


def test_steps_batch_cache_and_checkpoints_scale_the_estimate():
    assert run(steps=200).steps_s == pytest.approx(2 * run().steps_s)
    assert run(batch_size=4).steps_s == pytest.approx(2 * run().steps_s)
    assert run(cache_features=True).setup_s > run().setup_s > 0  # the cache is built before the first step
    assert run(checkpoints=4).steps_s > run().steps_s  # each checkpoint validates


def test_the_default_cpu_run_takes_minutes_not_a_quarter_of_an_hour():
    """Fine-tune's CPU defaults (200 steps at patch 128, batch 2, cached, a checkpoint every 50)."""
    estimate = run(steps=200, patch_size=128, cache_features=True, checkpoints=4)
    assert 60 < estimate.total_s < 5 * 60
    # the old defaults (patch 256) took about a quarter of an hour, as the walkthrough measured
    assert run(steps=200, patch_size=256, cache_features=True, checkpoints=4).total_s > 8 * 60


@pytest.mark.parametrize(
    ("seconds", "text"), [(3, "about 5 s"), (42, "about 40 s"), (185, "about 3 min"), (4800, "about 1 h 20 min")]
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert format_duration(seconds) == text
