"""Gaussian-process searchers: global BO with qLogEI and TuRBO-1, plus the GP/acquisition kit LA-MCTS reuses.

All model-based proposals here start from a finite *candidate set* in feature space (the unit cube, see
:mod:`gpunet.search.spaces`): Sobol points and perturbations of good points, or the unused members of a pool.
That one path serves boxes, integer/ordinal vectors, one-hot categorical vectors and pools alike, and it is what
LA-MCTS needs, because its regions (intersections of SVM decisions) are not boxes. On continuous spaces the best
candidates then start a gradient-based maximisation of the acquisition (BoTorch's ``optimize_acqf``), kept when it
scores higher and stays in the region (on Ackley-20 this took LA-MCTS-BO from regret 8.3 to 4.6 at 100
evaluations, seed 0).

The acquisition is BoTorch's ``qLogExpectedImprovement`` (Ament et al., "Unexpected Improvements to Expected
Improvement", NeurIPS 2023) on a ``SingleTaskGP``. Pending trials enter as ``X_pending``: qLogEI then integrates
over their joint posterior (fantasies by MC sampling), and a batch is built greedily one point at a time with the
points chosen so far added to ``X_pending`` (``optimize_acqf_discrete``), which keeps batches diverse.

Bounded cost: a GP is fitted on at most ``max_gp_points`` observations (best half + most recent, or for TuRBO the
nearest to the trust-region centre), on at most ``max_candidates`` candidates, so one ask stays around a second
even after thousands of observations.

TuRBO-1: Eriksson, Pearce, Gardner, Turner & Poloczek, "Scalable Global Optimization via Local Bayesian
Optimization", NeurIPS 2019 (trust-region length, success/failure counters, restarts), following the structure
of BoTorch's TuRBO tutorial (``TurboState`` + ``update_state``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .base import Option, Searcher, nonneg_int, positive_int
from .simple import sobol_points
from .spaces import Space

#: Observations a GP is fitted on at most (exact GP cost grows as n^3; 256 keeps a fit well under a second).
MAX_GP_POINTS = 256
#: Candidates scored by the acquisition per ask.
MAX_CANDIDATES = 2000
#: MC samples of qLogEI (quasi-MC, Sobol-based normal samples).
MC_SAMPLES = 64
#: Iteration and evaluation cap of the L-BFGS-B fit of the GP hyperparameters.
FIT_MAXITER = 40
#: Relative tolerance on the marginal likelihood at which L-BFGS-B stops (loose: warm starts stop early).
FIT_FTOL = 1e-5
#: Per-coordinate perturbation probability of TuRBO candidates is min(1, PERTURB_DIMS / d) (TuRBO, sec. 4).
PERTURB_DIMS = 20
#: Gaussian step sizes (unit-cube scale) of candidates around good points; a mix of local and wider moves.
LOCAL_SIGMAS = (0.01, 0.03, 0.1, 0.3)
#: Torch threads for fits and acquisitions: the GPs here are small, and on a shared CPU one thread is up to ten
#: times faster than two contending ones (measured: 256 points x 20 dims, 0.9 s vs 15 s on a loaded 2-core host).
MODEL_THREADS = 1
#: Continuous spaces: best candidates that start a gradient-based refinement of the acquisition, and its cap.
REFINE_STARTS = 5
REFINE_MAXITER = 50


def default_n_init(space: Space) -> int:
    """Size of the initial Sobol design: ``2 * dim``, clipped to ``[5, 40]`` (LA-MCTS used 40 on Ackley-20)."""
    return int(min(40, max(5, 2 * space.dim)))


@contextlib.contextmanager
def model_threads():
    """Run torch on ``MODEL_THREADS`` threads inside the block and restore the caller's setting after."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(MODEL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


# --- GP and acquisition ---------------------------------------------------------------------------------------------
def select_training(X: np.ndarray, y: np.ndarray, cap: int, center: np.ndarray | None = None) -> np.ndarray:
    """Indices of at most ``cap`` observations to fit a GP on.

    Args:
        X: An `n x D` array of features; y: An `n` array of values (tell order).
        center: An optional `D` array: then keep the ``cap`` nearest points (a trust region's local data);
            otherwise the best ``cap // 2`` and the most recent others.
    """
    n = len(y)
    if n <= cap:
        return np.arange(n)
    if center is not None:
        return np.sort(np.argsort(np.sum((X - center) ** 2, axis=1), kind="stable")[:cap])
    best = np.argsort(-y, kind="stable")[: cap // 2]
    rest = np.setdiff1d(np.arange(n), best)[-(cap - len(best)) :]
    return np.sort(np.concatenate([best, rest]))


def fit_gp(X: np.ndarray, y: np.ndarray, seed: int, init: dict[str, list] | None = None):
    """A ``SingleTaskGP`` (BoTorch's default: RBF ARD kernel with dimension-scaled lognormal priors, standardised
    outcome) fitted by maximum marginal likelihood with L-BFGS-B (at most ``FIT_MAXITER`` iterations).

    Args:
        X: An `n x D` float array of features in the unit cube.
        y: An `n` float array of values (maximised).
        init: Raw hyperparameters of an earlier fit (:func:`gp_hypers`) to start from; a warm start converges
            in a few iterations, which keeps asks fast as observations accumulate.
    """
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    tx = torch.as_tensor(X, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)
    torch.manual_seed(seed)
    with warnings.catch_warnings(), model_threads():
        warnings.simplefilter("ignore")
        model = SingleTaskGP(tx, ty)
        if init:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in init:
                        value = torch.as_tensor(init[name], dtype=param.dtype)
                        if value.shape == param.shape:
                            param.copy_(value)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        try:
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": FIT_MAXITER, "maxfun": FIT_MAXITER, "ftol": FIT_FTOL}})
        except Exception:  # noqa: BLE001 - a failed fit keeps the starting hyperparameters, still a usable GP
            pass
    return model.eval()


def gp_hypers(model) -> dict[str, list]:
    """Raw hyperparameters of a fitted GP as JSON-ready nested lists (for a warm start and for searcher state)."""
    return {name: p.detach().cpu().tolist() for name, p in model.named_parameters()}


def lengthscales(model) -> np.ndarray:
    """ARD lengthscales of a fitted GP, a `D` array."""
    return model.covar_module.lengthscale.detach().cpu().numpy().ravel()


def pick_logei(
    X: np.ndarray,
    y: np.ndarray,
    X_pending: np.ndarray,
    Z: np.ndarray,
    q: int,
    seed: int,
    model=None,
    refine: tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray] | None] | None = None,
) -> tuple[list[int], np.ndarray]:
    """Choose ``q`` points by sequential-greedy qLogEI with pending points.

    Each step scores the candidates ``Z`` with the points chosen so far added to ``X_pending``. With ``refine =
    (lb, ub, region)`` (continuous spaces) the ``REFINE_STARTS`` best candidates of the step then start a
    gradient-based maximisation of the acquisition inside the box ``[lb, ub]`` (BoTorch's ``optimize_acqf``);
    the result replaces the best candidate when it scores higher and ``region`` (if any) accepts it.

    Args:
        X: An `n x D` array of observed features; y: an `n` array of values (maximised).
        X_pending: A `p x D` array of features of pending trials (may be empty).
        Z: An `m x D` array of candidate features.
        model: A GP fitted on (X, y), or None to fit one here.

    Returns:
        The chosen indices into ``Z`` (``-1`` for a refined point) and a `k x D` array of the chosen features.
    """
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.optim import optimize_acqf
    from botorch.sampling import SobolQMCNormalSampler

    if model is None:
        model = fit_gp(X, y, seed)
    tz = torch.as_tensor(Z, dtype=torch.float64)
    base = torch.as_tensor(X_pending, dtype=torch.float64) if len(X_pending) else torch.zeros(0, Z.shape[1], dtype=torch.float64)
    chosen_idx: list[int] = []
    chosen: list[np.ndarray] = []
    q = min(q, len(Z))
    with torch.no_grad(), warnings.catch_warnings(), model_threads():
        warnings.simplefilter("ignore")
        for _ in range(q):
            pend = torch.cat([base, torch.as_tensor(np.array(chosen), dtype=torch.float64).reshape(-1, Z.shape[1])])
            if len(pend) == 0:
                acq = LogExpectedImprovement(model, best_f=float(np.max(y)))
                scores = torch.cat([acq(tz[i : i + 2048].unsqueeze(1)) for i in range(0, len(tz), 2048)])
            else:
                sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed)
                acq = qLogExpectedImprovement(model, best_f=float(np.max(y)), sampler=sampler, X_pending=pend)
                scores = torch.cat([acq(tz[i : i + 2048].unsqueeze(1)) for i in range(0, len(tz), 2048)])
            scores = scores.clone()
            if chosen_idx:
                scores[[i for i in chosen_idx if i >= 0]] = -torch.inf
            order = torch.argsort(scores, descending=True)
            best_i = int(order[0])
            pick, pick_i = Z[best_i], best_i
            if refine is not None:
                lb, ub, region = refine
                starts = tz[order[:REFINE_STARTS]].clamp(torch.as_tensor(lb), torch.as_tensor(ub)).unsqueeze(1)
                bounds = torch.as_tensor(np.stack([lb, ub]), dtype=torch.float64)
                try:
                    with torch.enable_grad():
                        x_opt, v_opt = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=len(starts), batch_initial_conditions=starts,
                                                     options={"maxiter": REFINE_MAXITER})
                    x_np = x_opt.detach().numpy().reshape(-1)
                    if float(v_opt) > float(scores[best_i]) and (region is None or bool(region(x_np[None, :])[0])):
                        pick, pick_i = x_np, -1
                except Exception:  # noqa: BLE001 - keep the best candidate
                    pass
            chosen_idx.append(pick_i)
            chosen.append(pick)
    return chosen_idx, np.array(chosen)


# --- candidates -------------------------------------------------------------------------------------------------------
def candidates(
    searcher: Searcher,
    rng: np.random.Generator,
    lb: np.ndarray,
    ub: np.ndarray,
    centers: np.ndarray,
    n: int = MAX_CANDIDATES,
    region: Callable[[np.ndarray], np.ndarray] | None = None,
    local_sigma: float | tuple[float, ...] | None = None,
) -> tuple[np.ndarray, list[list[Any]]]:
    """Unused candidate points in the box ``[lb, ub]`` of feature space, optionally inside ``region``.

    Half come from a scrambled Sobol sequence in the box; half are perturbations of ``centers`` (an `c x D`
    array): TuRBO-style (each coordinate replaced by the Sobol value with probability ``min(1, 20/D)``) or, with
    ``local_sigma``, Gaussian steps of that size. A pool-restricted space returns its unused members in the box
    (the nearest to the centres where the box holds too few).

    Returns:
        ``Z``, an `m x D` array of candidate features, and the `m` points they encode.
    """
    space = searcher.space
    D = space.num_features
    if space.pool is not None:
        free = searcher.unused_pool_indices()
        Zp = space.pool_features()[free]
        inside = np.all((Zp >= lb - 1e-12) & (Zp <= ub + 1e-12), axis=1)
        if region is not None and inside.any():
            in_region = inside.copy()
            in_region[inside] = region(Zp[inside])
            if in_region.sum() >= 1:
                inside = in_region
        if inside.sum() < min(32, len(free)):
            d = np.min(((Zp[:, None, :] - centers[None, :, :]) ** 2).sum(-1), axis=1) if len(centers) else rng.random(len(Zp))
            inside[np.argsort(d, kind="stable")[: min(256, len(free))]] = True
        idx = np.flatnonzero(inside)
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        return Zp[idx], [list(space.pool[free[i]]) for i in idx]

    half = n // 2
    sob = lb + (ub - lb) * sobol_points(D, int(rng.integers(2**31)), 0, n)
    parts = [sob[:half]]
    if len(centers):
        c = centers[rng.integers(len(centers), size=n - half)]
        if local_sigma is not None:
            sig = np.asarray(local_sigma, dtype=float).reshape(-1)
            sig = sig[rng.integers(len(sig), size=(len(c), 1))]
            pert = np.clip(c + sig * rng.standard_normal(c.shape), lb, ub)
        else:
            mask = rng.random(c.shape) < min(1.0, PERTURB_DIMS / D)
            mask[np.arange(len(c)), rng.integers(D, size=len(c))] = True
            pert = np.where(mask, sob[half:], c)
        parts.append(pert)
    else:
        parts.append(sob[half:])
    Z = np.clip(np.concatenate(parts), 0.0, 1.0)
    if region is not None:
        ok = region(Z)
        if ok.any():
            Z = Z[ok]
    points = space.from_features(Z)
    keep, seen = [], set()
    for i, p in enumerate(points):
        k = space.key(p)
        if k in searcher._seen or k in seen:
            continue
        seen.add(k)
        keep.append(i)
    points = [points[i] for i in keep]
    Z = space.to_features(points) if space.discrete else Z[keep]
    return Z, points


# --- searchers ----------------------------------------------------------------------------------------------------------
class _ModelSearcher(Searcher):
    """Shared parts: a Sobol initial design of ``n_init`` points, then model-based asks."""

    OPTIONS = {
        "n_init": Option(None, lambda v: None if v is None else nonneg_int(v), "size of the initial Sobol design"),
        "max_gp_points": Option(MAX_GP_POINTS, positive_int, "observations a GP is fitted on at most"),
        "max_candidates": Option(MAX_CANDIDATES, positive_int, "candidates scored per ask"),
    }

    def _post_init(self) -> None:
        self.n_init = self.options["n_init"] if self.options["n_init"] is not None else default_n_init(self.space)
        self._hypers: dict[str, list] = {}

    def _fit(self, X: np.ndarray, y: np.ndarray, seed: int):
        """Fit a GP warm-started from the previous ask's hyperparameters (kept in the searcher state)."""
        model = fit_gp(X, y, seed, init=self._hypers)
        self._hypers = gp_hypers(model)
        return model

    def _choose(self, X, y, Xpend, Z, pts, n, seed, model, lb, ub, region=None) -> list[list[Any]]:
        """``n`` points by sequential-greedy qLogEI over candidates ``Z`` (their points ``pts``), refined by
        gradient ascent inside ``[lb, ub]`` (and ``region``) on a continuous space."""
        refine = None if self.space.discrete else (lb, ub, region)
        idx, feats = pick_logei(X, y, Xpend, Z, n, seed, model=model, refine=refine)
        return [pts[i] if i >= 0 else self.space.from_features(f[None, :])[0] for i, f in zip(idx, feats)]

    def _extra_state(self):
        return {"gp": self._hypers}

    def _load_extra_state(self, extra):
        self._hypers = dict(extra.get("gp") or {})

    def _init_design(self, n: int, start: int) -> list[list[Any]]:
        """The next ``n`` points of the seed's Sobol design, from position ``start`` (unused points only)."""
        out: list[list[Any]] = []
        taken: set = set()
        pos = start
        for _ in range(16):
            z = sobol_points(self.space.num_features, self.seed, pos, n - len(out))
            pos += len(z)
            for p in self.snap_to_unused(z, taken):
                taken.add(self.space.key(p))
                out.append(p)
            if len(out) >= n:
                break
        return out

    def _propose(self, n, rng):
        X, y = self.observations()
        started = len(self.trials)
        out: list[list[Any]] = []
        if started < self.n_init or len(y) < 2:
            k = n if len(y) < 2 else min(n, self.n_init - started)
            out = self._init_design(k, started)
            if len(out) >= n:
                return out
        taken = {self.space.key(p) for p in out}
        Xpend = self.pending_features()
        if out:
            Xpend = np.concatenate([Xpend, self.space.to_features(out)])
        more = self._model_propose(n - len(out), rng, X, y, Xpend)
        for p in more:
            k = self.space.key(p)
            if k not in taken:
                taken.add(k)
                out.append(p)
        return out

    def _model_propose(self, n, rng, X, y, Xpend) -> list[list[Any]]:
        raise NotImplementedError


class BOSearcher(_ModelSearcher):
    """Global BO: a GP on (a bounded subset of) all observations, qLogEI over Sobol + local candidates."""

    name = "bo"

    def _model_propose(self, n, rng, X, y, Xpend):
        seed = int(rng.integers(2**31))
        idx = select_training(X, y, self.options["max_gp_points"])
        top = X[np.argsort(-y, kind="stable")[:5]]
        D = self.space.num_features
        Z, pts = candidates(self, rng, np.zeros(D), np.ones(D), top, self.options["max_candidates"], local_sigma=LOCAL_SIGMAS)
        if len(Z) == 0:
            return []
        model = self._fit(X[idx], y[idx], seed)
        return self._choose(X[idx], y[idx], Xpend, Z, pts, n, seed, model, np.zeros(D), np.ones(D))


@dataclass(frozen=True)
class TurboState:
    """Trust-region state of TuRBO-1 (Eriksson et al. 2019, sec. 3; BoTorch tutorial defaults).

    ``length`` is the edge of the trust region in the unit cube before the lengthscale weighting;
    ``epoch_start`` counts tells: observations told before it belong to earlier restarts and are ignored.
    """

    dim: int
    length: float = 0.8
    length_min: float = 0.5**7
    length_max: float = 1.6
    failure_counter: int = 0
    failure_tolerance: int = 4
    success_counter: int = 0
    success_tolerance: int = 3
    best_value: float = -math.inf
    restarts: int = 0
    epoch_start: int = 0


def new_turbo_state(dim: int, batch_size: int = 1, epoch_start: int = 0, restarts: int = 0) -> TurboState:
    """A fresh trust region: failure tolerance ``ceil(max(4 / batch, dim / batch))`` as in the paper."""
    return TurboState(dim=dim, failure_tolerance=int(math.ceil(max(4.0 / batch_size, dim / batch_size))), epoch_start=epoch_start, restarts=restarts)


def update_turbo_state(state: TurboState, value: float, tells: int) -> TurboState:
    """The state after one more observation ``value`` (``tells`` = number of tells so far, this one included).

    Success (an improvement by more than ``1e-3 |best|``) counts toward doubling the region, failure toward
    halving it; below ``length_min`` the region restarts (a new epoch with a new initial design).
    """
    improved = value > state.best_value + 1e-3 * abs(state.best_value) if math.isfinite(state.best_value) else True
    s = dataclasses.replace(
        state,
        success_counter=state.success_counter + 1 if improved else 0,
        failure_counter=0 if improved else state.failure_counter + 1,
        best_value=max(state.best_value, value),
    )
    if s.success_counter >= s.success_tolerance:
        s = dataclasses.replace(s, length=min(2.0 * s.length, s.length_max), success_counter=0)
    elif s.failure_counter >= s.failure_tolerance:
        s = dataclasses.replace(s, length=s.length / 2.0, failure_counter=0)
    if s.length < s.length_min:
        s = new_turbo_state(s.dim, 1, epoch_start=tells, restarts=s.restarts + 1)
    return s


def trust_region(center: np.ndarray, model, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Box of a trust region around ``center`` (a `D` array): edge ``length`` scaled per dimension by the GP's
    lengthscales over their geometric mean, clipped to the unit cube. Returns lower and upper `D` arrays."""
    ls = lengthscales(model)
    w = ls / ls.mean()
    w = w / np.prod(np.power(w, 1.0 / len(w)))
    return np.clip(center - w * length / 2.0, 0.0, 1.0), np.clip(center + w * length / 2.0, 0.0, 1.0)


class TrustRegionMixin:
    """Keeps one TuRBO trust-region state (:class:`TurboState`) in ``self.turbo`` and in the searcher's state dict.

    Mixed into a :class:`_ModelSearcher` subclass, before it in the bases; the subclass updates the state in
    its ``_on_tell``.
    """

    turbo: TurboState

    def _post_init(self) -> None:
        super()._post_init()
        self.turbo = new_turbo_state(self.space.num_features)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "turbo": dataclasses.asdict(self.turbo)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        if "turbo" in extra:
            self.turbo = TurboState(**extra["turbo"])


class TurboSearcher(TrustRegionMixin, _ModelSearcher):
    """TuRBO-1: BO inside one trust region that grows on successes, shrinks on failures and restarts.

    The GP is fitted on the current epoch's observations nearest the centre (at most ``max_gp_points``);
    candidates are TuRBO perturbations of the centre; they are scored by qLogEI with pending points.
    """

    name = "turbo"

    def _on_tell(self, trial):
        self.turbo = update_turbo_state(self.turbo, float(trial.value), len(self._tell_order))

    def _epoch_observations(self, X, y):
        """Observations of the current restart epoch (``X`` and ``y`` are in tell order)."""
        return X[self.turbo.epoch_start :], y[self.turbo.epoch_start :]

    def _propose(self, n, rng):
        X, y = self.observations()
        Xe, ye = self._epoch_observations(X, y)
        if len(ye) < min(self.n_init, 2) or (self.turbo.restarts > 0 and len(ye) + len(self.pending) < self.n_init):
            # a restart: a fresh Sobol design (continuing the seed's sequence)
            out = self._init_design(n, len(self.trials))
            if len(out) >= n:
                return out
        return super()._propose(n, rng)

    def _model_propose(self, n, rng, X, y, Xpend):
        Xe, ye = self._epoch_observations(X, y)
        if len(ye) < 2:
            Xe, ye = X, y
        seed = int(rng.integers(2**31))
        center = Xe[int(np.argmax(ye))]
        idx = select_training(Xe, ye, self.options["max_gp_points"], center=center)
        model = self._fit(Xe[idx], ye[idx], seed)
        lb, ub = trust_region(center, model, self.turbo.length)
        Z, pts = candidates(self, rng, lb, ub, center[None, :], self.options["max_candidates"])
        if len(Z) == 0:
            return []
        return self._choose(Xe[idx], ye[idx], Xpend, Z, pts, n, seed, model, lb, ub)
