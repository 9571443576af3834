"""Pruners on hand-made learning curves: Vizier's median stopping rule and ASHA as their papers define them."""

from __future__ import annotations

import random
import statistics

import pytest

from gpunet.search.pruners import (PRUNERS, ASHAPruner, Curve, MedianPruner, NopPruner, PeerIndex, PrunerError,
                                   create_pruner)
from gpunet.spec import STOPPING_RULES, EarlyStoppingSpec, parse_training


def done(name: str, *values: float) -> Curve:
    return Curve(name, tuple(values), completed=True)


def running(name: str, *values: float) -> Curve:
    return Curve(name, tuple(values))


def test_median_rule_uses_running_averages_of_completed_trials_up_to_the_step() -> None:
    # running averages after 2 steps: 0.5, 0.6, 0.7 -> median 0.6; their values *at* step 2 (0.9, 1.0, 1.1) and
    # their bests would give other medians, so only the running average makes the expected answers below
    peers = [done("a", 0.1, 0.9, 0.9), done("b", 0.2, 1.0, 1.0), done("c", 0.3, 1.1, 1.1)]
    pruner = MedianPruner()
    assert pruner.prune(running("x", 0.55, 0.59), 2, peers).prune
    assert "median 0.6000" in pruner.prune(running("x", 0.55, 0.59), 2, peers).reason
    # the trial's *best* by step s counts, not its last value
    assert not pruner.prune(running("x", 0.61, 0.2), 2, peers).prune


def test_median_rule_stops_only_when_strictly_worse() -> None:
    peers = [done("a", 0.4, 0.6), done("b", 0.6, 0.8)]  # running averages 0.5 and 0.7: median 0.6
    assert not MedianPruner().prune(running("x", 0.6), 1, [done("a", 0.6), done("b", 0.6)]).prune
    assert not MedianPruner().prune(running("x", 0.5, 0.6), 2, peers).prune
    assert MedianPruner().prune(running("x", 0.5, 0.5999), 2, peers).prune


def test_median_rule_ignores_running_and_early_stopped_trials() -> None:
    trial = running("x", 0.3, 0.3)
    # far better peers, but still running or stopped early: not completed trials
    others = [running("a", 0.9, 0.9), Curve("b", (0.9, 0.9), completed=False)]
    assert not MedianPruner().prune(trial, 2, others).prune
    assert MedianPruner().prune(trial, 2, [*others, done("c", 0.9, 0.9)]).prune


def test_median_rule_counts_only_completed_trials_that_reached_the_step() -> None:
    short = done("a", 0.9)  # completed, but after one step only (a shorter run)
    assert not MedianPruner().prune(running("x", 0.1, 0.1), 2, [short]).prune
    assert MedianPruner().prune(running("x", 0.1), 1, [short]).prune


def test_warmup_minimum_peers_and_last_step() -> None:
    peers = [done("a", 0.9, 0.9, 0.9), done("b", 0.9, 0.9, 0.9)]
    low = running("x", 0.1, 0.1, 0.1)
    assert not MedianPruner(warmup_steps=2).prune(low, 1, peers).prune
    assert MedianPruner(warmup_steps=2).prune(low, 2, peers).prune
    assert not MedianPruner(min_peers=3).prune(low, 2, peers).prune
    assert MedianPruner(min_peers=2).prune(low, 2, peers).prune
    assert not MedianPruner(max_steps=3).prune(low, 3, peers).prune, "the last step is never pruned"
    assert not NopPruner().prune(low, 2, peers).prune


def test_the_trial_itself_is_not_its_own_peer() -> None:
    me = done("x", 0.1, 0.1)
    assert not MedianPruner().prune(me, 2, [me]).prune


def test_asha_rungs_lie_at_min_resource_times_powers_of_eta() -> None:
    pruner = ASHAPruner(min_resource=2, reduction_factor=3)
    assert [s for s in range(1, 60) if pruner.rung_of(s) is not None] == [2, 6, 18, 54]
    assert [pruner.rung_of(s) for s in (2, 6, 18, 54)] == [0, 1, 2, 3]
    assert [s for s in range(1, 30) if ASHAPruner(1, 2).rung_of(s) is not None] == [1, 2, 4, 8, 16]


def test_asha_keeps_the_top_1_over_eta_of_the_values_recorded_at_a_rung() -> None:
    pruner = ASHAPruner(min_resource=1, reduction_factor=3)
    # rung 0 (step 1) values of 5 trials that reached it, whatever their state: with the trial, n = 6 -> top 2 go on
    others = [running("a", 0.50), done("b", 0.40, 0.9, 0.9), Curve("c", (0.30,)), running("d", 0.20), running("e", 0.10)]
    assert not pruner.prune(running("x", 0.45), 1, others).prune  # 2nd of 6
    decision = pruner.prune(running("x", 0.35), 1, others)  # 3rd of 6
    assert decision.prune and "top 2 of 6" in decision.reason and "threshold 0.4000" in decision.reason
    # fewer than eta values: the single best goes on
    assert not pruner.prune(running("x", 0.6), 1, [running("a", 0.5)]).prune
    assert pruner.prune(running("x", 0.4), 1, [running("a", 0.5)]).prune
    # ties with the threshold go on
    assert not pruner.prune(running("x", 0.40), 1, others).prune


def test_asha_decides_only_at_rungs_on_the_value_reached_there() -> None:
    pruner = ASHAPruner(min_resource=1, reduction_factor=2)
    others = [running("a", 0.9, 0.9, 0.9), running("b", 0.8, 0.8, 0.8)]
    trial = running("x", 0.1, 0.95, 0.1)
    assert pruner.prune(trial, 1, others).prune  # rung 0: 0.1 is not in the top 1 of 3
    assert not pruner.prune(trial, 2, others).prune  # rung 1: 0.95 is the best at step 2
    assert not pruner.prune(trial, 3, others).prune  # step 3 is no rung
    # a trial's value at the rung, not its best so far
    assert pruner.prune(running("y", 0.99, 0.5), 2, others).prune
    assert not ASHAPruner(min_resource=1, reduction_factor=2, min_peers=3).prune(trial, 1, others).prune


def test_settings_are_checked_and_named() -> None:
    with pytest.raises(PrunerError, match="reduction_factor"):
        ASHAPruner(reduction_factor=1)
    with pytest.raises(PrunerError, match="warmup_steps"):
        MedianPruner(warmup_steps=0)
    with pytest.raises(PrunerError, match="rule"):
        create_pruner("hyperband")
    with pytest.raises(PrunerError, match="step"):
        MedianPruner().prune(running("x", 0.5), 2, [])
    assert create_pruner("asha", min_resource=2, reduction_factor=4).settings()["reduction_factor"] == 4


def test_the_spec_lists_the_pruners_and_builds_each() -> None:
    from gpunet.controller.searching import pruner_of

    assert STOPPING_RULES == PRUNERS
    for rule, kind in (("median", MedianPruner), ("asha", ASHAPruner), ("none", NopPruner)):
        training = parse_training({"epochs": 9, "earlyStopping": {"rule": rule, "minEpochs": 3, "minPeers": 4,
                                                                  "minResource": 2, "reductionFactor": 2}})
        pruner = pruner_of(training)
        assert type(pruner) is kind and (pruner.warmup_steps, pruner.min_peers, pruner.max_steps) == (3, 4, 9)
    off = parse_training({"earlyStopping": {"enabled": False, "rule": "asha"}})
    assert type(pruner_of(off)) is NopPruner
    assert EarlyStoppingSpec().rule == "median"


def _median_by_definition(trial: Curve, step: int, others: list[Curve], min_peers: int) -> bool:
    averages = [statistics.fmean(c.values[:step]) for c in others if c.completed and len(c.values) >= step]
    return len(averages) >= min_peers and max(trial.values[:step]) < statistics.median(averages)


def _asha_by_definition(trial: Curve, step: int, others: list[Curve], eta: int, min_peers: int) -> bool:
    if step not in [eta**k for k in range(4)]:  # rungs of min_resource 1
        return False
    recorded = [c.values[step - 1] for c in others if len(c.values) >= step]
    if len(recorded) < min_peers:
        return False
    ranked = sorted([*recorded, trial.values[step - 1]], reverse=True)
    return trial.values[step - 1] < ranked[max(1, len(ranked) // eta) - 1]


def test_an_index_kept_through_updates_decides_as_the_definitions_on_the_current_curves() -> None:
    # The controller keeps one PeerIndex per tier and updates it as curves grow, complete or are cut back (a
    # resumed trial); every decision must equal the rule applied to the current curves from scratch.
    rng = random.Random(7)
    curves: dict[str, Curve] = {}
    index = PeerIndex()
    median, asha = MedianPruner(min_peers=2), ASHAPruner(min_resource=1, reduction_factor=3, min_peers=2)
    stops = 0
    for _ in range(600):
        name = f"t{rng.randrange(40)}"
        values = list(curves.get(name, Curve(name, ())).values)
        if values and rng.random() < 0.1:
            values = values[: rng.randrange(len(values))]  # cut back: an epoch reported again
        values.append(round(rng.random(), 2))  # ties on purpose
        curve = Curve(name, tuple(values[:6]), completed=len(values) >= 6 or rng.random() < 0.05)
        others = [c for c in curves.values() if c.trial_id != name]
        step = len(curve.values)
        expected = (_median_by_definition(curve, step, others, 2), _asha_by_definition(curve, step, others, 3, 2))
        assert (median.prune(curve, step, index).prune, asha.prune(curve, step, index).prune) == expected
        stops += sum(expected)
        curves[name] = curve
        index.update(curve)
        assert index.values_at(step) == sorted(c.values[step - 1] for c in curves.values() if len(c.values) >= step)
    assert stops > 100 and len(index) == len(curves)  # both answers occur
    for name in list(curves):
        index.discard(name)
    assert len(index) == 0 and index.values_at(1) == [] and index.averages_at(1) == []


def test_an_index_that_lost_track_of_a_value_says_so() -> None:
    from gpunet.search.pruners import bisect_remove

    with pytest.raises(PrunerError, match="out of step"):
        bisect_remove([0.1, 0.3], 0.2)
