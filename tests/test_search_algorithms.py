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


def _pool_searcher(pool_size: int, observed: int, **options):
    """lamcts-bo on a 6 x 5 categorical space restricted to a random pool, with ``observed`` points told."""
    rng = np.random.default_rng(3)
    full = search.CategoricalSpace([list(range(5))] * 6)
    members = {tuple(int(v) for v in row) for row in rng.integers(5, size=(pool_size, 6))}
    space = full.restrict([list(m) for m in sorted(members)])
    target = np.array([1, 3, 0, 2, 4, 1])

    def f(p):
        return -float(np.sum(np.asarray(p) != target)) + 0.1 * float(np.sum(p))

    s = search.create("lamcts-bo", space, seed=0, max_candidates=512, **options)
    for i in rng.permutation(len(space.pool))[:observed]:
        s.observe(space.pool[i], f(space.pool[i]))
    return s, f


def test_lamcts_proposals_respect_the_region():
    from gpunet.search import lamcts

    # min_region_candidates=1: widen only an empty region, so that small leaf regions are searched as they are
    s, f = _pool_searcher(pool_size=300, observed=60, leaf_size=6, min_region_candidates=1)
    seen = []
    real_tree, real_choose = s._tree, s._choose

    def tree(X, y, rng):
        root, path = real_tree(X, y, rng)
        seen.append({"path": path})
        return root, path

    def choose(X, y, Xpend, Z, pts, n, seed, model, lb, ub, region=None):
        seen[-1]["Z"] = Z
        out = real_choose(X, y, Xpend, Z, pts, n, seed, model, lb, ub, region)
        seen[-1]["chosen"] = s.space.to_features(out)
        return out

    s._tree, s._choose = tree, choose
    for k in range(8):
        (t,) = s.ask()
        s.tell(t.id, f(t.params))
        fb = s.last_region_fallback
        # the region searched: the selected leaf's, or an ancestor's after a recorded fallback
        seen[-1]["depth"] = fb["used_depth"] if fb and fb["ask"] == k else len(seen[-1]["path"])
    assert len(seen) == 8
    small = 0
    for ask in seen:
        assert ask["path"], "the tree must split for this test to mean anything"
        region = ask["path"][: ask["depth"]]
        assert region, "a fallback to the whole space: the test's setup should give regions with members"
        inside = lamcts.in_region(region, s.space.pool_features())
        small += int(inside.sum()) < 32
        assert lamcts.in_region(region, ask["Z"]).all()  # every candidate lies in the region
        assert lamcts.in_region(region, ask["chosen"]).all()
    assert small > 0  # the case that once padded the candidates with the nearest pool members, in the region or not
    assert sum(a["depth"] == len(a["path"]) for a in seen) > len(seen) // 2  # mostly the selected leaf itself


def test_lamcts_falls_back_to_the_parent_region_when_the_leaf_has_no_candidate_and_records_it(monkeypatch):
    from gpunet.search import lamcts

    s, f = _pool_searcher(pool_size=300, observed=40, leaf_size=6)
    real = lamcts.candidates
    used = []

    def leaf_region_is_used_up(searcher, rng, lb, ub, centers, n, region=None, local_sigma=None):
        Z, pts = real(searcher, rng, lb, ub, centers, n, region=region, local_sigma=local_sigma)
        used.append(region)
        return (Z[:0], []) if len(used) == 1 else (Z, pts)  # the selected leaf's region holds nothing unused

    monkeypatch.setattr(lamcts, "candidates", leaf_region_is_used_up)
    (t,) = s.ask()
    assert len(used) == 2 and used[0] is not None
    assert s.region_fallbacks == 1
    fb = s.last_region_fallback
    assert fb["ask"] == 0 and fb["used_depth"] == fb["selected_depth"] - 1 >= 0
    restored = search.from_state_dict(s.state_dict())
    assert restored.region_fallbacks == 1 and restored.last_region_fallback == fb


@pytest.mark.parametrize("need", [None, 5])  # None: the default, MIN_REGION_CANDIDATES (32)
def test_lamcts_widens_a_region_with_too_few_candidates(monkeypatch, need):
    from gpunet.search import lamcts

    options = {} if need is None else {"min_region_candidates": need}
    widened = need is None
    need = lamcts.MIN_REGION_CANDIDATES if need is None else need
    s, f = _pool_searcher(pool_size=300, observed=40, leaf_size=6, **options)
    real = lamcts.candidates
    regions, chosen = [], []

    def five_in_the_leaf(searcher, rng, lb, ub, centers, n, region=None, local_sigma=None):
        Z, pts = real(searcher, rng, lb, ub, centers, n, region=region, local_sigma=local_sigma)
        regions.append(region)
        return (Z[:5], pts[:5]) if len(regions) == 1 else (Z, pts)  # the selected leaf's region holds 5 unused

    monkeypatch.setattr(lamcts, "candidates", five_in_the_leaf)
    real_choose = s._choose

    def choose(X, y, Xpend, Z, pts, n, seed, model, lb, ub, region=None):
        chosen.append(len(Z))
        return real_choose(X, y, Xpend, Z, pts, n, seed, model, lb, ub, region)

    s._choose = choose
    (t,) = s.ask()
    assert regions[0] is not None
    if widened:  # 5 < 32: the parent's region (or an ancestor's) is searched, with at least 32 candidates
        assert len(regions) >= 2 and chosen[0] >= need
        assert s.region_fallbacks == 1
        fb = s.last_region_fallback
        assert fb["ask"] == 0 and fb["selected_candidates"] == 5 and fb["used_depth"] < fb["selected_depth"]
        assert search.from_state_dict(s.state_dict()).last_region_fallback == fb
    else:  # 5 >= 5: the leaf's own five candidates are scored
        assert len(regions) == 1 and chosen == [5]
        assert s.region_fallbacks == 0 and s.last_region_fallback is None


def test_lamcts_min_region_candidates_is_checked():
    with pytest.raises(search.SearchError, match="min_region_candidates"):
        search.create("lamcts-bo", easy_quadratic(4).space, min_region_candidates=0)


def test_lamcts_leaf_size_follows_the_budget():
    from gpunet.search.lamcts import LEAF_SIZE, default_leaf_size

    assert [default_leaf_size(b) for b in (None, 6, 20, 50, 100, 1000)] == [LEAF_SIZE, 2, 4, 10, 20, 20]
    space = easy_quadratic(4).space
    assert search.create("lamcts-bo", space, budget=50).leaf_size == 10
    assert search.create("lamcts-bo", space, budget=50, leaf_size=7).leaf_size == 7
    assert search.create("lamcts-bo", space, budget=6).n_init == 2  # a fourth of a small budget: model asks remain
    with pytest.raises(search.SearchError, match="budget"):
        search.create("lamcts-bo", space, budget=0)


def test_lamcts_tree_splits_at_the_demo_budget():
    from pathlib import Path

    from gpunet.controller.proposer import _create
    from gpunet.space import load_space
    from gpunet.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist.yaml")
    algo = spec.algorithm
    assert (algo.name, algo.budget) == ("lamcts-bo", 6)
    full = search.IntegerSpace.from_search_space(load_space(spec.search_space))
    rng = np.random.default_rng(0)
    pool = [list(map(int, p)) for p in {tuple(p) for p in map(tuple, full.from_features(rng.random((400, full.num_features))))}]
    algorithm = {"name": algo.name, "seed": algo.seed, "initial_samples": algo.initial_samples, "budget": algo.budget,
                 "options": dict(algo.options)}
    s = _create(algorithm, spec.search_space, pool, 0, None)  # as the controller builds a tier's searcher
    depths = []
    real_tree = s._tree

    def tree(X, y, rng):
        root, path = real_tree(X, y, rng)
        depths.append(len(path))
        return root, path

    s._tree = tree
    for _ in range(algo.budget):
        (t,) = s.ask()
        z = s.space.to_features([t.params])[0]
        s.tell(t.id, -float(np.sum((z - 0.3) ** 2)))
    assert len(depths) == algo.budget - s.n_init > 0  # every proposal after the initial design is a tree's
    assert max(depths) >= 1  # the tree split: LA-MCTS, not plain BO


def test_lamcts_split_leaves_each_child_a_gps_worth_of_samples():
    from gpunet.search.lamcts import build_tree, default_min_child

    rng = np.random.default_rng(0)
    X = np.concatenate([0.2 + 0.1 * rng.random((24, 2)), 0.8 + 0.1 * rng.random((6, 2))])
    y = np.where(X[:, 0] > 0.5, 1.0, 0.0) + 0.01 * rng.random(30)  # a small good corner of 6 samples
    reference = build_tree(X, y, leaf_size=10, seed=0)  # min_child=1: the reference's rule
    assert reference.children, "the setup must split"
    smallest = min(c.n for c in reference.children)
    assert smallest < 10
    guarded = build_tree(X, y, leaf_size=10, seed=0, min_child=smallest + 1)
    assert not guarded.children  # the split that left a child of `smallest` samples is not made
    # the searcher's default: the initial design's size, at most the leaf size
    assert [default_min_child(n, leaf) for n, leaf in ((12, 10), (12, 20), (3, 2), (0, 5))] == [10, 12, 2, 1]
    space = search.CategoricalSpace([list(range(5))] * 6)  # NAS-Bench-201's shape
    assert search.create("lamcts-bo", space, budget=50).min_child == 10
    assert search.create("lamcts-bo", space, budget=100).min_child == 12
    assert search.create("lamcts-bo", space, budget=100, min_child=1).min_child == 1
    with pytest.raises(search.SearchError, match="min_child"):
        search.create("lamcts-bo", space, min_child=0)


def test_lamcts_local_candidates_perturb_the_regions_five_best(monkeypatch):
    from gpunet.search import lamcts
    from gpunet.search.bo import LOCAL_CENTERS

    space = search.CategoricalSpace([list(range(5))] * 6)
    rng = np.random.default_rng(1)
    s = search.create("lamcts-bo", space, seed=0, max_candidates=256, leaf_size=100)  # the tree never splits
    target = np.array([1, 3, 0, 2, 4, 1])
    for p in {tuple(int(v) for v in row) for row in rng.integers(5, size=(40, 6))}:
        s.observe(list(p), -float(np.sum(np.asarray(p) != target)) + 0.01 * float(np.sum(p)))
    real, seen = lamcts.candidates, []

    def spy(searcher, rng, lb, ub, centers, n, region=None, local_sigma=None):
        seen.append(centers)
        return real(searcher, rng, lb, ub, centers, n, region=region, local_sigma=local_sigma)

    monkeypatch.setattr(lamcts, "candidates", spy)
    s.ask()
    X, y = s.observations()
    best = X[np.argsort(-y, kind="stable")[:LOCAL_CENTERS]]
    assert len(seen) == 1 and np.array_equal(seen[0], best)  # bo's five, not the better half of the 40
