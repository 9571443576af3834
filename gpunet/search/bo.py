"""Bayesian optimisation: the shared model-based searcher and global BO with log expected improvement.

:class:`ModelSearcher` is what every GP-based searcher (``bo``, ``turbo``, ``lamcts-bo``, ``lamcts-turbo``) has
in common: a scrambled Sobol initial design of ``n_init`` points, then asks that fit a GP (:mod:`.gp`) on a
bounded subset of the observations, build a candidate set (:mod:`.candidates`) and choose points on it by
sequential-greedy (q)LogEI with the pending trials as ``X_pending``, or by Thompson sampling with the
``acquisition: ts`` option (the GP sees the values through the ``output_warp`` option,
:func:`~gpunet.search.gp.warp_targets`). It also keeps the GP's hyperparameters (the
warm start of the next fit) and the record of failed fits in the searcher state.

:class:`BOSearcher` (``bo``) is the global variant: a GP on (a bounded subset of) all observations, candidates
from Sobol points and Gaussian steps around the five best points, chosen by LogEI (Ament et al., "Unexpected
Improvements to Expected Improvement for Bayesian Optimization", NeurIPS 2023).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Option, Searcher, boolean, nonneg_int, one_of, positive_int
from .candidates import (ACQUISITIONS, LOCAL_SIGMAS, MAX_CANDIDATES, candidates, optimize_continuous,
                         optimize_discrete, thompson_discrete)
from .gp import MAX_GP_POINTS, WARPS, fit_gp, gp_hypers, select_training, warp_targets
from .simple import sobol_points


#: With a known budget the initial design takes at most this fraction of it (at least ``MIN_N_INIT`` points).
N_INIT_FRACTION = 0.25
#: Local candidates perturb this many of the best observations (``bo``: of all; ``lamcts-bo``: of the region's).
LOCAL_CENTERS = 5
#: Default of the ``output_warp`` option (see :func:`~gpunet.search.gp.warp_targets`). None, because neither warp
#: helped everywhere: on 6 held-out NAS-Bench-201 problems (10 seeds, 100 evaluations) the Gaussian copula
#: ("rank") lowered lamcts-bo's median regret on 2 and raised it on 4 (benchmarks/README.md, fourth pass).
OUTPUT_WARP = "none"
#: The fewest observations a model-based ask starts from (two: a GP needs a spread of values).
MIN_N_INIT = 2


def default_n_init(space: Any, budget: int | None = None) -> int:
    """Size of the initial Sobol design: ``2 * dim``, clipped to ``[5, 40]`` (LA-MCTS used 40 on Ackley-20), and
    with a known ``budget`` (evaluations) at most ``max(MIN_N_INIT, int(N_INIT_FRACTION * budget))``, so that a
    small search still has model-based asks (budget 6: 2 initial points, then 4 proposals; budget 100 on the
    6-dimensional NAS-Bench-201 space: 12, unchanged)."""
    n = int(min(40, max(5, 2 * space.dim)))
    if budget is not None:
        n = min(n, max(MIN_N_INIT, int(N_INIT_FRACTION * budget)))
    return n


class ModelSearcher(Searcher):
    """Shared parts of the GP-based searchers: a Sobol initial design of ``n_init`` points, then model-based asks.

    Subclasses implement :meth:`_model_propose`. The ``budget`` option (the evaluations planned, when the caller
    knows them: the controller passes ``spec.algorithm.budget``, the benchmarks their budget) only sizes defaults;
    the searcher never stops by itself. Attributes besides :class:`Searcher`'s:
        fit_failures: how many GP fits of this searcher failed (each one logged as a warning and answered with
            the fit's starting hyperparameters, see :func:`~gpunet.search.gp.fit_gp`); kept in the state dict.
        last_fit_error: ``"<ExceptionType>: <message>"`` of the latest failed fit, or None.
    """

    OPTIONS = {
        "n_init": Option(None, lambda v: None if v is None else nonneg_int(v), "size of the initial Sobol design"),
        "budget": Option(None, lambda v: None if v is None else positive_int(v), "evaluations the search will make, "
                         "if known: bounds the default initial design (and sets LA-MCTS's default leaf size)"),
        "max_gp_points": Option(MAX_GP_POINTS, positive_int, "observations a GP is fitted on at most"),
        "max_candidates": Option(MAX_CANDIDATES, positive_int, "candidates scored per ask"),
        "output_warp": Option(OUTPUT_WARP, one_of(*WARPS), "increasing warp of the values a GP is "
                              "fitted on: power (Yeo-Johnson), rank (Gaussian copula) or none; see gp.warp_targets"),
        "acquisition": Option(ACQUISITIONS[0], one_of(*ACQUISITIONS), "how points are chosen on the candidates: "
                              "logei ((q)LogEI, sequential-greedy) or ts (Thompson sampling)"),
        "strict_fit": Option(False, boolean, "raise GPFitError when a GP fit fails, instead of falling back to the "
                             "hyperparameters the fit started from"),
    }

    def _post_init(self) -> None:
        n_init = self.options["n_init"]
        self.n_init = n_init if n_init is not None else default_n_init(self.space, self.options["budget"])
        self._hypers: dict[str, list] = {}
        self.fit_failures = 0
        self.last_fit_error: str | None = None

    def _fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, np.ndarray]:
        """Fit a GP on ``X`` (`n x D`) and ``y`` (`n`) under the ``output_warp``, warm-started from the previous
        ask's hyperparameters (kept in the searcher state). Returns the model and the warped `n` targets it was
        fitted on (the acquisition's incumbent is their maximum).

        Raises:
            GPFitError: the fit failed and the ``strict_fit`` option is set.
        """
        yw = warp_targets(y, self.options["output_warp"])
        fit = fit_gp(X, yw, seed, init=self._hypers, strict=self.options["strict_fit"])
        if fit.error is not None:
            self.fit_failures += 1
            self.last_fit_error = fit.error
        self._hypers = gp_hypers(fit.model)
        return fit.model, yw

    def _choose(self, X: np.ndarray, y: np.ndarray, Xpend: np.ndarray, Z: np.ndarray, pts: list[list[Any]], n: int,
                seed: int, model: Any, lb: np.ndarray, ub: np.ndarray, region: Any = None) -> list[list[Any]]:
        """``n`` points by sequential-greedy (q)LogEI (or Thompson sampling) over candidates ``Z`` (an `m x D`
        array; their points ``pts``), the GP ``model`` having been fitted on ``(X, y)`` (``y`` as warped by
        :meth:`_fit`) and ``Xpend`` (a `p x D` array) pending.

        Discrete spaces use BoTorch's ``optimize_acqf_discrete`` with the pending points (this ask's own
        initial-design points included) as ``X_avoid``; observed points are not among the candidates already, and
        avoiding them again would cost 10-15 % of the selection time (measured: 0.06-0.2 s CPU per ask with 200
        training points and 2,000 candidates of the GPUNet space). A continuous space refines each step by
        gradient ascent inside ``[lb, ub]`` (and ``region``). With ``acquisition: ts`` every space takes the
        argmax of one posterior draw per point over ``Z`` (:func:`~gpunet.search.candidates.thompson_discrete`)."""
        if self.options["acquisition"] == "ts":
            return [pts[i] for i in thompson_discrete(model, Z, n, seed, X_avoid=Xpend)]
        best_f = float(np.max(y))
        if self.space.discrete:
            return [pts[i] for i in optimize_discrete(model, best_f, Z, n, seed, Xpend)]
        idx, feats = optimize_continuous(model, best_f, Z, n, seed, Xpend, lb, ub, region)
        return [pts[i] if i >= 0 else self.space.from_features(f[None, :])[0] for i, f in zip(idx, feats)]

    def _extra_state(self) -> dict[str, Any]:
        return {"gp": self._hypers, "fit_failures": self.fit_failures, "last_fit_error": self.last_fit_error}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._hypers = dict(extra.get("gp") or {})
        self.fit_failures = int(extra.get("fit_failures", 0))
        self.last_fit_error = extra.get("last_fit_error")

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

    def _propose(self, n: int, rng: np.random.Generator) -> list[list[Any]]:
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

    def _model_propose(self, n: int, rng: np.random.Generator, X: np.ndarray, y: np.ndarray,
                       Xpend: np.ndarray) -> list[list[Any]]:
        """``n`` points from the model, given all observations ``(X, y)`` (`n x D`, `n`) and pending ``Xpend``."""
        raise NotImplementedError


class BOSearcher(ModelSearcher):
    """Global BO: a GP on (a bounded subset of) all observations, qLogEI over Sobol + local candidates."""

    name = "bo"

    def _model_propose(self, n, rng, X, y, Xpend):
        seed = int(rng.integers(2**31))
        idx = select_training(X, y, self.options["max_gp_points"])
        top = X[np.argsort(-y, kind="stable")[:LOCAL_CENTERS]]
        D = self.space.num_features
        Z, pts = candidates(self, rng, np.zeros(D), np.ones(D), top, self.options["max_candidates"], local_sigma=LOCAL_SIGMAS)
        if len(Z) == 0:
            return []
        model, yw = self._fit(X[idx], y[idx], seed)
        return self._choose(X[idx], yw, Xpend, Z, pts, n, seed, model, np.zeros(D), np.ones(D))
