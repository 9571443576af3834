"""The Gaussian-process surrogate of the model-based searchers: BoTorch's ``SingleTaskGP``, fitted on a bounded
subset of the observations.

Model: BoTorch's default ``SingleTaskGP``, i.e. a constant mean, an RBF kernel with one lengthscale per feature
(ARD) and dimension-scaled log-normal priors on the lengthscales (Hvarfner, Hellsten & Nardi, "Vanilla Bayesian
Optimization Performs Great in High Dimensions", ICML 2024), a Gaussian likelihood with a log-normal noise prior.
Input transform: none, because features already lie in the unit cube (:mod:`gpunet.search.spaces`); outcome
transform: ``Standardize`` (BoTorch's default), so values of any scale can be told, after an optional increasing
warp of the values (:func:`warp_targets`: a power transform or the Gaussian copula; the searchers' option
``output_warp``, default none). The hyperparameters are fitted
by maximising the exact marginal log likelihood with L-BFGS-B (``fit_gpytorch_mll``), warm-started from the
previous ask's fit.

Bounded cost: an exact GP costs `O(n^3)` in the number of observations, so a GP sees at most ``MAX_GP_POINTS`` of
them (:func:`select_training`). A fit that fails is reported, never swallowed (:func:`fit_gp`).

Nothing here imports torch at module level: BoTorch and gpytorch load on the first fit.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..errors import GpunetError

logger = logging.getLogger(__name__)

#: Observations a GP is fitted on at most (exact GP cost grows as n^3; 256 keeps a fit well under a second).
MAX_GP_POINTS = 256
#: Iteration and evaluation cap of the L-BFGS-B fit of the GP hyperparameters.
FIT_MAXITER = 40
#: Relative tolerance on the marginal likelihood at which L-BFGS-B stops (loose: warm starts stop early).
FIT_FTOL = 1e-5
#: Torch threads for fits and acquisitions: the GPs here are small, and on a shared CPU one thread is up to ten
#: times faster than two contending ones (measured: 256 points x 20 dims, 0.9 s vs 15 s on a loaded 2-core host).
MODEL_THREADS = 1


class GPFitError(GpunetError, RuntimeError):
    """The marginal-likelihood fit of a GP failed (raised only when the caller asks for strictness)."""


@dataclass(frozen=True)
class GPFit:
    """A GP ready for prediction, and how its fit went.

    Attributes:
        model: A ``SingleTaskGP`` in eval mode, conditioned on the training data.
        error: None after a successful fit; after a failed one, ``"<ExceptionType>: <message>"``, and ``model``
            then carries the hyperparameters the fit started from (see :func:`fit_gp`).
    """

    model: Any
    error: str | None = None


@contextlib.contextmanager
def model_threads() -> Iterator[None]:
    """Run torch on ``MODEL_THREADS`` threads inside the block and restore the caller's setting after."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(MODEL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


#: Output warps of the GP's targets (:func:`warp_targets`).
WARPS = ("power", "rank", "none")


def warp_targets(y: np.ndarray, method: str) -> np.ndarray:
    """The values a GP is fitted on: ``y`` (an `n` array, maximised) under an increasing warp, an `n` array.

    - ``"power"``: standardise, then a Yeo-Johnson power transform whose exponent is fitted by maximum likelihood
      (scikit-learn's ``PowerTransformer``), as HEBO does (Cowen-Rivers et al., "HEBO: Pushing the Limits of
      Sample-Efficient Hyperparameter Optimisation", JAIR 2022, sec. 4.1).
    - ``"rank"``: the Gaussian copula, ``Phi^-1((rank - 1/2) / n)`` (Salinas, Shen & Perrone, "A Quantile-based
      Approach for Hyperparameter Transfer Learning", ICML 2020): only the order of the values counts.
    - ``"none"``: ``y`` unchanged (the model's ``Standardize`` outcome transform still applies).

    Why warp at all: a GP with a Gaussian likelihood models skewed values badly. Under MnasNet's reward on
    NAS-Bench-201 the values have a long low tail (cells of "none" edges score 10 % where the best score 93 %), so
    the differences among the best points are a few hundredths of the values' standard deviation. Measured
    (benchmarks/README.md, fourth pass): neither warp helps everywhere, so the searchers' default is ``"none"``.

    Fewer than 3 values and constant values come back unchanged; a power transform that yields a non-finite
    value falls back to the standardised values.

    Raises:
        ValueError: ``method`` is not one of :data:`WARPS`.
    """
    y = np.asarray(y, dtype=np.float64)
    if method not in WARPS:
        raise ValueError(f"output warp {method!r}: expected one of {', '.join(WARPS)}")
    sd = float(np.std(y)) if len(y) else 0.0
    if method == "none" or len(y) < 3 or sd == 0.0:
        return y
    if method == "rank":
        from scipy.stats import norm, rankdata

        return norm.ppf((rankdata(y) - 0.5) / len(y))
    z = (y - float(np.mean(y))) / sd
    from sklearn.preprocessing import PowerTransformer

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        w = PowerTransformer(method="yeo-johnson", standardize=True).fit_transform(z[:, None]).ravel()
    return w if np.all(np.isfinite(w)) else z


def select_training(X: np.ndarray, y: np.ndarray, cap: int, center: np.ndarray | None = None) -> np.ndarray:
    """Indices of at most ``cap`` observations to fit a GP on, in increasing order.

    Args:
        X: An `n x D` array of features.
        y: An `n` array of values (maximised), in tell order.
        cap: The most observations to keep (``MAX_GP_POINTS`` by default in the searchers).
        center: An optional `D` array: then keep the ``cap`` nearest points (a trust region's local data, as in
            TuRBO); otherwise the best ``cap // 2`` and the most recent others.

    Returns:
        An int64 array of at most ``cap`` indices into ``X``.
    """
    n = len(y)
    if n <= cap:
        return np.arange(n)
    if center is not None:
        return np.sort(np.argsort(np.sum((X - center) ** 2, axis=1), kind="stable")[:cap])
    best = np.argsort(-y, kind="stable")[: cap // 2]
    rest = np.setdiff1d(np.arange(n), best)[-(cap - len(best)) :]
    return np.sort(np.concatenate([best, rest]))


def fit_gp(X: np.ndarray, y: np.ndarray, seed: int, init: dict[str, list] | None = None, *, strict: bool = False) -> GPFit:
    """Fit a ``SingleTaskGP`` on ``(X, y)`` by maximum marginal likelihood (at most ``FIT_MAXITER`` L-BFGS-B steps).

    BoTorch's ``fit_gpytorch_mll`` already retries a fit that ends badly from hyperparameters drawn from their
    priors; when every attempt fails it raises ``ModelFittingError``. That failure (or any other error of the
    optimisation, e.g. a Cholesky failure) is logged as a warning with the exception and returned in
    :attr:`GPFit.error`; the model then falls back to the hyperparameters the fit started from: ``init`` (the
    previous ask's fit) when given, else BoTorch's defaults. It is still a valid GP conditioned on the data, so
    the ask goes on.

    Args:
        X: An `n x D` float array of features in the unit cube.
        y: An `n` float array of values (maximised).
        seed: Torch seed of the fit (the retries draw from the priors).
        init: Raw hyperparameters of an earlier fit (:func:`gp_hypers`) to start from; a warm start converges in a
            few iterations, which keeps asks fast as observations accumulate. Entries whose name or shape does not
            match the model are ignored.
        strict: Raise :class:`GPFitError` instead of falling back.

    Returns:
        A :class:`GPFit`.

    Raises:
        GPFitError: the fit failed and ``strict`` is set.
    """
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    tx = torch.as_tensor(X, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)
    torch.manual_seed(seed)
    error = None
    with warnings.catch_warnings(), model_threads():
        warnings.simplefilter("ignore")
        model = SingleTaskGP(tx, ty, outcome_transform=Standardize(m=1), input_transform=None)
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
        except Exception as exc:  # noqa: BLE001 - reported below, and raised when strict
            error = f"{type(exc).__name__}: {exc}"
            shape = f"{len(y)} observations x {tx.shape[-1]} features"
            if strict:
                raise GPFitError("GP fit", shape, "a converged marginal-likelihood fit", reason=error) from exc
            fallback = "the previous fit's hyperparameters" if init else "BoTorch's default hyperparameters"
            logger.warning("GP fit on %s failed (%s); falling back to %s", shape, error, fallback)
    return GPFit(model.eval(), error)


def gp_hypers(model: Any) -> dict[str, list]:
    """Raw hyperparameters of a GP as JSON-ready nested lists (for a warm start and for searcher state)."""
    return {name: p.detach().cpu().tolist() for name, p in model.named_parameters()}


def lengthscales(model: Any) -> np.ndarray:
    """ARD lengthscales of a GP, a `D` array."""
    return model.covar_module.lengthscale.detach().cpu().numpy().ravel()
