"""TuRBO-1: Bayesian optimisation inside one trust region that grows on successes, shrinks on failures, restarts.

Eriksson, Pearce, Gardner, Turner & Poloczek, "Scalable Global Optimization via Local Bayesian Optimization",
NeurIPS 2019. The loop state is a frozen dataclass, :class:`TurboState`, updated by a pure function,
:func:`update_turbo_state`, following the structure of BoTorch's TuRBO tutorial (``TurboState`` +
``update_state``). :class:`TrustRegionMixin` keeps that state in a searcher and its state dict; LA-MCTS-TuRBO
(:mod:`.lamcts`) mixes it in too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bo import ModelSearcher
from .candidates import candidates
from .gp import lengthscales, select_training

#: Relative improvement of the best value that counts as a success (TuRBO: 1e-3 |best|).
SUCCESS_MARGIN = 1e-3


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
    return TurboState(dim=dim, failure_tolerance=int(math.ceil(max(4.0 / batch_size, dim / batch_size))),
                      epoch_start=epoch_start, restarts=restarts)


def update_turbo_state(state: TurboState, value: float, tells: int) -> TurboState:
    """The state after one more observation ``value`` (``tells`` = number of tells so far, this one included).

    Success (an improvement by more than ``SUCCESS_MARGIN * |best|``) counts toward doubling the region, failure
    toward halving it; below ``length_min`` the region restarts (a new epoch with a new initial design).
    """
    if math.isfinite(state.best_value):
        improved = value > state.best_value + SUCCESS_MARGIN * abs(state.best_value)
    else:
        improved = True
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


def trust_region(center: np.ndarray, model: Any, length: float) -> tuple[np.ndarray, np.ndarray]:
    """The box of a trust region around ``center`` (a `D` array) in the unit cube.

    Its edge is ``length`` scaled per dimension by the GP's lengthscales over their geometric mean (TuRBO, sec.
    3), clipped to the unit cube. Returns the lower and upper bounds, two `D` arrays.
    """
    ls = lengthscales(model)
    w = ls / ls.mean()
    w = w / np.prod(np.power(w, 1.0 / len(w)))
    return np.clip(center - w * length / 2.0, 0.0, 1.0), np.clip(center + w * length / 2.0, 0.0, 1.0)


class TrustRegionMixin:
    """Keeps one TuRBO trust-region state (:class:`TurboState`) in ``self.turbo`` and in the searcher's state dict.

    Mixed into a :class:`~gpunet.search.bo.ModelSearcher` subclass, before it in the bases; the subclass updates
    the state in its ``_on_tell``.
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


class TurboSearcher(TrustRegionMixin, ModelSearcher):
    """TuRBO-1 (``turbo``): BO inside one trust region that grows on successes, shrinks on failures, restarts.

    The GP is fitted on the current epoch's observations nearest the centre (at most ``max_gp_points``);
    candidates are TuRBO perturbations of the centre; they are scored by qLogEI with pending points.
    """

    name = "turbo"

    def _on_tell(self, trial):
        self.turbo = update_turbo_state(self.turbo, float(trial.value), len(self._tell_order))

    def _epoch_observations(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        model, yw = self._fit(Xe[idx], ye[idx], seed)
        lb, ub = trust_region(center, model, self.turbo.length)
        Z, pts = candidates(self, rng, lb, ub, center[None, :], self.options["max_candidates"])
        if len(Z) == 0:
            return []
        return self._choose(Xe[idx], yw, Xpend, Z, pts, n, seed, model, lb, ub)
