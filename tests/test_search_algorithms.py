"""Every searcher improves on its initial design on an easy 4-D problem at a tiny budget."""

from __future__ import annotations

import numpy as np
import pytest

from gpunet import search
from gpunet.search.problems import easy_quadratic

N_INIT = 5
BUDGET = 20
OPTIONS = {
    "random": {},
    "sobol": {},
    "evolution": {"population_size": N_INIT, "tournament_size": 3},
    "bo": {"n_init": N_INIT, "max_candidates": 512},
    "turbo": {"n_init": N_INIT, "max_candidates": 512},
    "lamcts-bo": {"n_init": N_INIT, "max_candidates": 512, "leaf_size": 6},
    "lamcts-turbo": {"n_init": N_INIT, "max_candidates": 512, "leaf_size": 6},
}


@pytest.mark.parametrize("name", search.ALGORITHMS)
def test_searcher_improves_on_its_initial_design(name):
    problem = easy_quadratic(4)
    s = search.create(name, problem.space, seed=0, **OPTIONS[name])
    values = []
    while len(values) < BUDGET:
        for t in s.ask(2 if len(values) >= N_INIT else 1):
            v = problem.evaluate(t.params)
            s.tell(t.id, v)
            values.append(v)
    init_best, final_best = max(values[:N_INIT]), max(values)
    assert final_best > init_best
    assert s.best.value == final_best


@pytest.mark.parametrize("name", ["bo", "lamcts-bo"])
def test_model_based_searchers_beat_random_search_on_the_easy_problem(name):
    problem = easy_quadratic(4)
    finals = {}
    for algo in (name, "random"):
        s = search.create(algo, problem.space, seed=1, **OPTIONS[algo])
        for _ in range(BUDGET):
            (t,) = s.ask()
            s.tell(t.id, problem.evaluate(t.params))
        finals[algo] = s.best.value
    assert finals[name] > finals["random"]
    assert np.isfinite(finals[name])


def test_turbo_trust_region_shrinks_on_failures_grows_on_successes_and_restarts():
    from gpunet.search.turbo import new_turbo_state, update_turbo_state

    s = new_turbo_state(dim=2)  # failure tolerance max(4, 2) = 4
    s = update_turbo_state(s, 1.0, 1)
    for k in range(4):
        s = update_turbo_state(s, 0.0, 2 + k)
    assert s.length == 0.4 and s.failure_counter == 0
    for k in range(3):
        s = update_turbo_state(s, 2.0 + k, 6 + k)
    assert s.length == 0.8
    tells = 9
    while s.restarts == 0:
        tells += 1
        s = update_turbo_state(s, -1.0, tells)
    assert s.length == 0.8 and s.epoch_start == tells and s.best_value == float("-inf")


def test_lamcts_tree_splits_good_from_bad_and_ucb_prefers_the_good_side():
    from gpunet.search.lamcts import build_tree, in_region, select_path

    rng = np.random.default_rng(0)
    X = rng.random((60, 2))
    y = -np.sum((X - 0.2) ** 2, axis=1)
    root = build_tree(X, y, leaf_size=20, seed=0)
    assert root.children and root.children[0].mean > root.children[1].mean
    assert sum(c.n for c in root.children) == 60
    path = select_path(root, cp=1e-6, rng=rng)  # almost no exploration: follow the good children
    assert all(choice == 0 for _, choice in path)
    inside = in_region(path, X)
    assert y[inside].mean() > y[~inside].mean()
