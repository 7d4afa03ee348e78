"""benchmarks/label_efficiency.py's bookkeeping: where a curve reaches the target, the ratio the goal reads,
the random squares drawn, and the strategies it accepts."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def label_efficiency(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "label_efficiency", raising=False)
    import label_efficiency

    return label_efficiency


def curve(*points):
    return [{"labelled_fraction": share, "dice": dice} for share, dice in points]


def test_the_share_to_reach_the_target_is_interpolated_between_rounds(label_efficiency):
    reach = label_efficiency.pixels_to_reach
    rising = curve((0.01, 0.60), (0.03, 0.70), (0.05, 0.90), (0.07, 0.80))
    assert reach(rising, 0.80) == pytest.approx(0.04)  # halfway from 0.70 (3 %) to 0.90 (5 %)
    assert reach(rising, 0.60) == 0.01  # round 0 already there: its own share
    assert reach(rising, 0.95) is None
    # a dip after the crossing does not move it: the first crossing counts
    assert reach(curve((0.01, 0.5), (0.02, 0.9), (0.03, 0.4), (0.04, 0.9)), 0.9) == pytest.approx(0.02)


def test_the_ratio_is_the_strategy_over_random(label_efficiency):
    ratio = label_efficiency.ratio
    assert ratio({"guided": 0.03, "random": 0.06}) == pytest.approx(0.5)
    assert ratio({"disagreement": 0.02, "random": 0.08}, "disagreement") == pytest.approx(0.25)
    assert ratio({"guided": None, "random": 0.06}) is None and ratio({"guided": 0.03, "random": None}) is None


def test_random_squares_are_distinct_and_never_fully_labelled(label_efficiency):
    painted = np.zeros((2, 32, 32), np.uint8)
    painted[0, :16, :16] = 1  # one square fully labelled
    painted[1, 0, 0] = 1  # one only in part: still a candidate
    user = SimpleNamespace(painted=painted)
    regions = label_efficiency.random_regions(user, 16, 7, np.random.default_rng(0))
    corners = {(r.slice_index, r.rows[0], r.cols[0]) for r in regions}
    assert len(regions) == len(corners) == 7 and (0, 0, 0) not in corners
    assert all(r.area == 256 for r in regions)
    assert len(label_efficiency.random_regions(user, 16, 20, np.random.default_rng(0))) == 7  # all there are


def test_the_strategies_on_the_command_line_are_checked(label_efficiency, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["label_efficiency.py", "--quick", "--strategies", "disagreement,random"])
    args = label_efficiency.parse_args()
    assert args.strategies == "disagreement,random" and args.rounds == label_efficiency.QUICK["rounds"]
    monkeypatch.setattr(sys, "argv", ["label_efficiency.py", "--strategies", "guided,entropy"])
    with pytest.raises(SystemExit):  # not run as random in silence
        label_efficiency.parse_args()
    assert "unknown strategies entropy: choose from guided, disagreement, random" in capsys.readouterr().err
