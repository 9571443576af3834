"""The GP kit of the model-based searchers: failed fits are reported, and discrete asks use optimize_acqf_discrete."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from gpunet import search
from gpunet.errors import GpunetError
from gpunet.search import IntegerSpace


def _data(n: int = 12, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    return X, -np.sum((X - 0.3) ** 2, axis=1) + 0.01 * rng.standard_normal(n)


@pytest.fixture
def failing_fit(monkeypatch):
    """Make every marginal-likelihood fit fail the way BoTorch reports it when all its attempts fail."""
    import botorch.fit
    from botorch.exceptions import ModelFittingError

    def fail(mll, *args, **kwargs):
        raise ModelFittingError("All attempts to fit the model have failed.")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", fail)


def test_a_successful_fit_reports_no_error_and_warm_starts_the_next():
    from gpunet.search.gp import fit_gp, gp_hypers

    X, y = _data()
    first = fit_gp(X, y, seed=0)
    assert first.error is None and not first.model.training
    again = fit_gp(X, y, seed=0, init=gp_hypers(first.model))
    assert again.error is None
    assert np.allclose(again.model.covar_module.lengthscale.detach().numpy(),
                       first.model.covar_module.lengthscale.detach().numpy(), rtol=0.05)


def test_a_failed_fit_is_logged_and_falls_back_to_the_starting_hyperparameters(failing_fit, caplog):
    from gpunet.search.gp import GPFitError, fit_gp, gp_hypers

    X, y = _data()
    init = {"covar_module.raw_lengthscale": [[0.5, -0.25, 1.0]]}
    with caplog.at_level(logging.WARNING, logger="gpunet.search.gp"):
        fit = fit_gp(X, y, seed=0, init=init)
    assert fit.error == "ModelFittingError: All attempts to fit the model have failed."
    assert gp_hypers(fit.model)["covar_module.raw_lengthscale"] == init["covar_module.raw_lengthscale"]
    assert "GP fit on 12 observations x 3 features failed (ModelFittingError: All attempts" in caplog.text
    assert "falling back to the previous fit's hyperparameters" in caplog.text
    with pytest.raises(GPFitError, match=r"^GP fit: got '12 observations x 3 features'; ModelFittingError: .*; "
                                         r"expected a converged marginal-likelihood fit$") as info:
        fit_gp(X, y, seed=0, strict=True)
    assert isinstance(info.value, GpunetError)


@pytest.mark.parametrize("name", ["bo", "turbo", "lamcts-bo", "lamcts-turbo"])
def test_searchers_count_failed_fits_and_keep_asking(name, failing_fit, caplog):
    space = IntegerSpace([0] * 3, [6] * 3)
    s = search.create(name, space, seed=0, n_init=3, max_candidates=128)
    with caplog.at_level(logging.WARNING, logger="gpunet.search.gp"):
        for _ in range(3):
            for t in s.ask(2):
                s.tell(t.id, -float(np.sum(np.square(t.params))))
    # 6 asked points, all distinct and valid; the asks after the initial design each fitted (and failed) once
    assert len({tuple(t.params) for t in s.trials.values()}) == 6
    assert s.fit_failures == 2 and s.last_fit_error.startswith("ModelFittingError")
    assert caplog.text.count("GP fit on") == 2
    state = json.loads(json.dumps(s.state_dict()))
    assert state["extra"]["fit_failures"] == 2
    assert search.from_state_dict(state).fit_failures == 2


def test_strict_fit_raises_and_loses_nothing(failing_fit):
    from gpunet.search.gp import GPFitError

    space = IntegerSpace([0] * 3, [6] * 3)
    s = search.create("lamcts-bo", space, seed=0, n_init=3, max_candidates=128, strict_fit=True)
    for t in s.ask(3):
        s.tell(t.id, float(sum(t.params)))
    before = json.dumps(s.state_dict()["trials"])
    with pytest.raises(GPFitError, match="^GP fit: got '3 observations x 3 features'"):
        s.ask(1)
    assert json.dumps(s.state_dict()["trials"]) == before and s.fit_failures == 0


def _greedy_reference(model, best_f, Z, q, seed, X_pending):
    """The greedy loop written out: argmax of (q)LogEI, each pick added to X_pending and removed from Z."""
    import torch

    from gpunet.search.candidates import log_ei

    tz = torch.as_tensor(Z)
    pend = torch.as_tensor(X_pending).reshape(-1, Z.shape[1])
    chosen: list[int] = []
    with torch.no_grad():
        for _ in range(q):
            taken = torch.tensor(chosen, dtype=torch.long)
            acq = log_ei(model, best_f, torch.cat([pend, tz[taken]]), seed)
            scores = acq(tz.unsqueeze(1))
            scores[taken] = -torch.inf
            chosen.append(int(torch.argmax(scores)))
    return chosen


@pytest.mark.parametrize("pending", [0, 2])
def test_discrete_choice_is_botorchs_sequential_greedy_and_avoids_given_points(pending):
    from gpunet.search.candidates import optimize_discrete
    from gpunet.search.gp import fit_gp

    X, y = _data(10, 3, seed=1)
    rng = np.random.default_rng(2)
    Z = (rng.integers(0, 7, size=(40, 3)) + 0.5) / 7  # features of an integer space with 7 values per digit
    Z = np.unique(Z, axis=0)
    Xp = rng.random((pending, 3))  # pending trials' features (off the candidate grid)
    model = fit_gp(X, y, seed=0).model
    chosen = optimize_discrete(model, float(y.max()), Z, 4, 5, Xp)
    assert chosen == _greedy_reference(model, float(y.max()), Z, 4, 5, Xp)
    avoided = optimize_discrete(model, float(y.max()), Z, 4, 5, Xp, X_avoid=Z[chosen[:1]])
    assert chosen[0] not in avoided and len(avoided) == 4
    assert sorted(optimize_discrete(model, float(y.max()), Z[:3], 5, 5, Xp)) == [0, 1, 2]  # q > candidates
    assert optimize_discrete(model, float(y.max()), Z[:2], 2, 5, Xp, X_avoid=Z[:2]) == []  # all avoided


@pytest.mark.parametrize("method", ["power", "rank"])
def test_output_warps_keep_the_order_and_spread_a_long_low_tail(method):
    from gpunet.search.gp import warp_targets

    rng = np.random.default_rng(0)
    # MnasNet-like values: most near 90 %, a long tail down to 10 % (cells of "none" edges)
    y = np.concatenate([90 + rng.standard_normal(40), rng.uniform(10, 60, 10)])
    w = warp_targets(y, method)
    assert w.shape == y.shape and np.all(np.isfinite(w))
    assert np.array_equal(np.argsort(w, kind="stable"), np.argsort(y, kind="stable"))  # increasing
    z = (y - y.mean()) / y.std()
    top = np.argsort(-y)[:10]
    # the best ten spread over a larger share of the (unit) standard deviation than before the warp
    assert np.ptp(w[top]) / w.std() > 2 * np.ptp(z[top])


def test_the_rank_warp_is_the_gaussian_copula_and_constant_values_pass_through():
    from scipy.stats import norm

    from gpunet.search.gp import warp_targets

    assert np.allclose(warp_targets(np.array([3.0, 1.0, 2.0, 10.0]), "rank"), norm.ppf([0.625, 0.125, 0.375, 0.875]))
    assert np.array_equal(warp_targets(np.full(5, 2.5), "power"), np.full(5, 2.5))
    assert np.array_equal(warp_targets(np.array([1.0, 5.0]), "none"), np.array([1.0, 5.0]))
    with pytest.raises(ValueError, match="output warp 'log': expected one of power, rank, none"):
        warp_targets(np.arange(5.0), "log")


@pytest.mark.parametrize("warp", ["rank", "power"])
def test_the_acquisitions_incumbent_is_the_best_warped_target(monkeypatch, warp):
    """The GP is fitted on the warped values, and LogEI's best_f is their maximum (not the raw maximum)."""
    from gpunet.search import bo, gp

    seen = {}
    real_fit, real_choose = gp.fit_gp, bo.optimize_discrete

    def fit(X, y, *args, **kwargs):
        seen["y"] = y
        return real_fit(X, y, *args, **kwargs)

    def choose(model, best_f, *args, **kwargs):
        seen["best_f"] = best_f
        return real_choose(model, best_f, *args, **kwargs)

    monkeypatch.setattr(bo, "fit_gp", fit)
    monkeypatch.setattr(bo, "optimize_discrete", choose)
    space = IntegerSpace([0] * 3, [9] * 3)
    s = search.create("bo", space, seed=0, n_init=6, output_warp=warp)
    for t in s.ask(6):
        s.tell(t.id, float(sum(t.params)) ** 3)
    s.ask(1)
    raw = s.observations()[1]  # the told values, in the order the GP saw them
    assert np.allclose(seen["y"], gp.warp_targets(raw, warp)) and not np.allclose(seen["y"], raw)
    assert seen["best_f"] == pytest.approx(float(np.max(seen["y"])))


def test_thompson_sampling_follows_the_posterior_draws_distinct_points_and_avoids_pending():
    """Each choice is the argmax of one joint posterior draw: with a confident GP the draws agree on the peak; a
    batch holds distinct candidates; a seed repeats its choice; X_avoid rows are never chosen."""
    from gpunet.search.candidates import thompson_discrete
    from gpunet.search.gp import fit_gp

    X = np.linspace(0.0, 1.0, 21)[:, None]
    y = -((X[:, 0] - 0.7) ** 2) * 50.0
    model = fit_gp(X, y, seed=0).model
    Z = np.linspace(0.0, 1.0, 101)[:, None]
    peak = int(np.argmin(np.abs(Z[:, 0] - 0.7)))
    firsts = [thompson_discrete(model, Z, 1, seed) for seed in range(10)]
    assert all(len(f) == 1 and abs(Z[f[0], 0] - 0.7) <= 0.03 for f in firsts)
    batch = thompson_discrete(model, Z, 6, 3)
    assert len(batch) == len(set(batch)) == 6 and batch == thompson_discrete(model, Z, 6, 3)
    assert peak not in thompson_discrete(model, Z, 6, 3, X_avoid=Z[[peak]])
    assert thompson_discrete(model, Z[:2], 3, 0, X_avoid=Z[:2]) == []


@pytest.mark.parametrize("name", ["bo", "lamcts-bo"])
def test_the_ts_acquisition_chooses_by_posterior_draws_and_never_repeats_a_point(monkeypatch, name):
    """acquisition=ts routes every model-based choice through thompson_discrete (LogEI is not called), and
    asks with pending trials still give unused points."""
    from gpunet.search import bo

    calls = {"ts": 0}
    real_ts = bo.thompson_discrete

    def ts(*args, **kwargs):
        calls["ts"] += 1
        return real_ts(*args, **kwargs)

    def no_logei(*args, **kwargs):
        raise AssertionError("LogEI chose a point under acquisition=ts")

    monkeypatch.setattr(bo, "thompson_discrete", ts)
    monkeypatch.setattr(bo, "optimize_discrete", no_logei)
    space = IntegerSpace([0] * 3, [9] * 3)
    s = search.create(name, space, seed=0, n_init=6, acquisition="ts")
    for t in s.ask(6):
        s.tell(t.id, -float(sum((v - 6) ** 2 for v in t.params)))
    keys = set()
    for _ in range(4):
        trials = s.ask(3)  # three pending at once
        assert len(trials) == 3
        for t in trials:
            assert tuple(t.params) not in keys
            keys.add(tuple(t.params))
        for t in trials:
            s.tell(t.id, -float(sum((v - 6) ** 2 for v in t.params)))
    assert calls["ts"] == 4
