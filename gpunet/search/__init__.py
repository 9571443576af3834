"""Black-box searchers behind one ask/tell interface (issue 4): the engine of the search inside a latency tier.

Usage::

    from gpunet import search
    space = search.BoxSpace([-5.0] * 20, [10.0] * 20)
    searcher = search.create("lamcts-bo", space, seed=0)
    for trial in searcher.ask(4):
        searcher.tell(trial.id, -f(trial.params))     # values are maximised
    state = searcher.state_dict()                     # plain JSON; load_state_dict() restores it

Algorithms (``ALGORITHMS``): ``random``, ``sobol``, ``evolution`` (Real et al. 2019), ``bo`` (BoTorch GP +
qLogEI), ``turbo`` (TuRBO-1, Eriksson et al. 2019), ``lamcts-bo`` (the default; LA-MCTS, Wang, Fonseca & Tian,
NeurIPS 2020, with BO in the selected region) and ``lamcts-turbo``. The model-based ones import torch lazily.

Modules: :mod:`.spaces` (spaces and :class:`SearchError`), :mod:`.base` (the ask/tell contract), :mod:`.simple`
(model-free searchers and the Sobol design), :mod:`.gp` (the GP and its fit), :mod:`.candidates` (candidate sets
and the acquisition's optimisation), :mod:`.bo`, :mod:`.turbo` and :mod:`.lamcts` (the model-based searchers).
Early stopping is apart from the searchers, as in Optuna: :mod:`.pruners` (Vizier's median stopping rule, ASHA).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .base import COMPLETE, FAILED, PENDING, Searcher, Trial
from .gp import GPFitError
from .spaces import BoxSpace, CategoricalSpace, IntegerSpace, SearchError, Space

# linear_operator (under gpytorch and BoTorch) calls torch.jit.script when imported, which torch 2.14 answers
# with a FutureWarning in the middle of a search's output. It is harmless, so only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

#: The default algorithm (paper 3.3.1).
DEFAULT_ALGORITHM = "lamcts-bo"

#: name -> (module, class); modules are imported on first use so that torch loads only when needed.
_REGISTRY: dict[str, tuple[str, str]] = {
    "random": ("simple", "RandomSearcher"),
    "sobol": ("simple", "SobolSearcher"),
    "evolution": ("simple", "EvolutionSearcher"),
    "bo": ("bo", "BOSearcher"),
    "turbo": ("turbo", "TurboSearcher"),
    "lamcts-bo": ("lamcts", "LamctsSearcher"),
    "lamcts-turbo": ("lamcts", "LamctsTurboSearcher"),
}
ALGORITHMS: tuple[str, ...] = tuple(_REGISTRY)


def searcher_class(name: str) -> type[Searcher]:
    """The class of algorithm ``name``; raises :class:`SearchError` naming the allowed ones."""
    if name not in _REGISTRY:
        raise SearchError("algorithm", name, list(ALGORITHMS))
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create(name: str = DEFAULT_ALGORITHM, space: Space | None = None, seed: int = 0, **options: Any) -> Searcher:
    """A new searcher of algorithm ``name`` over ``space``, seeded with ``seed``.

    Raises:
        SearchError: unknown ``name``, an unknown option, or an option value out of range (the message names
            the option, the value and what is allowed).
    """
    cls = searcher_class(name)
    if space is None:
        raise SearchError("space", None, "a BoxSpace, IntegerSpace or CategoricalSpace")
    return cls(space, seed=seed, **options)


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of algorithm ``name`` with their defaults, checked as :func:`create` would, without a space and
    without importing torch (the operator validates a NASSearch with it before anything starts).

    Raises:
        SearchError: unknown ``name``, an unknown option, or an option value out of range.
    """
    return searcher_class(name)._check_options(dict(options))


def from_state_dict(state: dict[str, Any]) -> Searcher:
    """Recreate a searcher (algorithm, space, seed, options and history) from :meth:`Searcher.state_dict`."""
    searcher = create(state["algorithm"], Space.from_dict(state["space"]), seed=int(state["seed"]), **state.get("options", {}))
    searcher.load_state_dict(state)
    return searcher


__all__ = [
    "ALGORITHMS", "DEFAULT_ALGORITHM", "BoxSpace", "CategoricalSpace", "GPFitError", "IntegerSpace", "SearchError",
    "Searcher", "Space", "Trial", "PENDING", "COMPLETE", "FAILED", "check_options", "create", "from_state_dict", "searcher_class",
]
