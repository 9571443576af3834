"""The multi-objective reward (MnasNet, Tan et al. 2019, eq. 2) and the Pareto front of gpunet.objectives."""

from __future__ import annotations

import math

import pytest

from gpunet.errors import GpunetError
from gpunet.objectives import MNAS_SOFT_W, mnas_reward, pareto_front, search_score
from gpunet.spec import AlgorithmSpec


@pytest.mark.parametrize("top1, latency, target", [(0.8, 1.0, 1.0), (0.75, 0.5, 1.0), (0.6, 2.0, 1.0), (0.9, 3.7, 0.25)])
def test_soft_mnas_reward_is_top1_times_latency_ratio_to_the_minus_007(top1, latency, target):
    assert mnas_reward(top1, latency, target) == pytest.approx(top1 * (latency / target) ** -0.07, rel=1e-12)
    assert MNAS_SOFT_W == -0.07


def test_hard_mnas_reward_is_top1_under_the_target_and_divided_by_the_ratio_above():
    assert mnas_reward(0.7, 0.4, 1.0, w=-1.0, hard=True) == pytest.approx(0.7)
    assert mnas_reward(0.7, 1.0, 1.0, w=-1.0, hard=True) == pytest.approx(0.7)
    assert mnas_reward(0.7, 2.0, 1.0, w=-1.0, hard=True) == pytest.approx(0.35)
    # soft: a faster network earns a little more than its top-1, a slower one a little less
    assert mnas_reward(0.7, 0.5, 1.0) > 0.7 > mnas_reward(0.7, 2.0, 1.0)


def test_mnas_reward_trades_accuracy_for_latency_as_the_paper_says():
    # MnasNet section 3: with w = -0.07, doubling the latency must buy about 5% relative accuracy to break even
    assert mnas_reward(0.70 * 2 ** 0.07, 2.0, 1.0) == pytest.approx(mnas_reward(0.70, 1.0, 1.0))


@pytest.mark.parametrize("kwargs, field", [({"latency_ms": 0.0}, "latency_ms"), ({"target_ms": math.nan}, "target_ms"),
                                           ({"w": 0.5}, "w")])
def test_mnas_reward_refuses_bad_arguments_naming_them(kwargs, field):
    args = {"top1": 0.5, "latency_ms": 1.0, "target_ms": 1.0, **kwargs}
    with pytest.raises(GpunetError) as info:
        mnas_reward(**args)
    assert info.value.field == field


def test_search_score_is_top1_when_tiered_and_the_reward_when_mnas():
    assert search_score(AlgorithmSpec(), 0.6, 5.0) == 0.6
    mnas = AlgorithmSpec(objective="mnas", target_ms=1.0)
    assert search_score(mnas, 0.6, 2.0) == pytest.approx(0.6 * 2 ** -0.07)
    assert search_score(mnas, 0.6, math.nan) == 0.0


def test_pareto_front_keeps_the_non_dominated_points_by_latency():
    points = [(1.0, 0.70), (0.5, 0.60), (2.0, 0.69), (1.5, 0.80), (0.5, 0.55), (3.0, 0.80)]
    assert pareto_front(points) == [1, 0, 3]
    assert pareto_front([]) == []
