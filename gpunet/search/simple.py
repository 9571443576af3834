"""Model-free searchers: uniform random search, scrambled Sobol, and regularised evolution.

Regularised evolution: Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019 (Algorithm 1: tournament selection from a population that ages out its oldest member).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..sobol import sobol_unit
from .base import Option, Searcher, positive_float, positive_int


class RandomSearcher(Searcher):
    """Uniformly random unused points (from the pool where the space has one)."""

    name = "random"

    def _propose(self, n, rng):
        return self.random_unseen(n, rng)


def sobol_points(num_features: int, seed: int, start: int, n: int) -> np.ndarray:
    """Points ``start .. start+n-1`` of a scrambled Sobol sequence in ``[0, 1]^d``, an `n x d` array.

    The searchers' one entry to Sobol sampling (initial designs, the Sobol searcher, candidate sets), on the
    project's one scipy wrapper :func:`gpunet.sobol.sobol_unit`; the same ``(d, seed, start, n)`` gives the same
    array (searcher state stores only positions in the sequence).
    """
    return sobol_unit(num_features, n, seed=seed, skip=start)


class SobolSearcher(Searcher):
    """Successive points of one scrambled Sobol sequence (the low-discrepancy design of paper 3.2).

    On a pool-restricted space each Sobol point is mapped to the nearest unused pool member.
    """

    name = "sobol"

    def _post_init(self) -> None:
        self._drawn = 0

    def _extra_state(self):
        return {"drawn": self._drawn}

    def _load_extra_state(self, extra):
        self._drawn = int(extra.get("drawn", 0))

    def _propose(self, n, rng):
        out: list[list[Any]] = []
        taken: set = set()
        for _ in range(64):
            z = sobol_points(self.space.num_features, self.seed, self._drawn, n - len(out))
            self._drawn += len(z)
            for p in self.snap_to_unused(z, taken):
                taken.add(self.space.key(p))
                out.append(p)
            if len(out) >= n:
                break
        return out


#: Regularised evolution defaults. Real et al. 2019 used population 100 and sample 25 for thousands of
#: evaluations; budgets here are 100-500, so a smaller population lets selection start sooner.
EVOLUTION_POPULATION = 20
EVOLUTION_TOURNAMENT = 5
#: Standard deviation of a Gaussian mutation of a box coordinate, as a fraction of its range.
EVOLUTION_SIGMA = 0.1


def mutate(space, parent_z: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Mutate the features of one point (an `num_features` array): change each dimension with probability
    ``1/dim`` (at least one). Box: Gaussian step; integer/categorical: a different value drawn uniformly."""
    z = parent_z.copy()
    dims = np.flatnonzero(rng.random(space.dim) < 1.0 / space.dim)
    if dims.size == 0:
        dims = np.array([rng.integers(space.dim)])
    for j in dims:
        if space.kind == "box":
            z[j] = np.clip(z[j] + sigma * rng.standard_normal(), 0.0, 1.0)
        elif space.kind == "integer":
            k = int(space.cards[j])
            if k > 1:
                cur = int(np.floor(z[j] * k))
                new = (cur + 1 + rng.integers(k - 1)) % k
                z[j] = (new + 0.5) / k
        else:
            o, k = int(space.offsets[j]), int(space.cards[j])
            if k > 1:
                cur = int(np.argmax(z[o : o + k]))
                new = (cur + 1 + rng.integers(k - 1)) % k
                z[o : o + k] = 0.0
                z[o + new] = 1.0
    return z


class EvolutionSearcher(Searcher):
    """Regularised (ageing) evolution, Real et al. 2019, Algorithm 1, made asynchronous.

    The population is the last ``population_size`` completed trials in the order they were told (the oldest
    dies). Until the population is full, points come from a Sobol design. Each asked point is a mutation of the
    best of ``tournament_size`` members drawn at random; pending points are never repeated.
    """

    name = "evolution"
    OPTIONS = {
        "population_size": Option(EVOLUTION_POPULATION, positive_int, "members of the population"),
        "tournament_size": Option(EVOLUTION_TOURNAMENT, positive_int, "members drawn per tournament"),
        "sigma": Option(EVOLUTION_SIGMA, positive_float, "Gaussian mutation step (box spaces), fraction of range"),
    }

    def _propose(self, n, rng):
        X, y = self.observations()
        pop = self.options["population_size"]
        started = len(X) + len(self.pending)
        out: list[list[Any]] = []
        taken: set = set()
        n_init = max(0, min(n, pop - started))
        if n_init:
            z = sobol_points(self.space.num_features, self.seed, started, n_init)
            for p in self.snap_to_unused(z, taken):
                taken.add(self.space.key(p))
                out.append(p)
        if len(X) == 0:
            return out
        Xp, yp = X[-pop:], y[-pop:]
        for _ in range(8 * n):
            if len(out) >= n:
                break
            members = rng.choice(len(Xp), size=min(self.options["tournament_size"], len(Xp)), replace=False)
            parent = Xp[members[np.argmax(yp[members])]]
            child = mutate(self.space, parent, rng, self.options["sigma"])
            for p in self.snap_to_unused(child[None, :], taken):
                taken.add(self.space.key(p))
                out.append(p)
        return out
