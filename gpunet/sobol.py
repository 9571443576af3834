"""Scrambled Sobol points in the unit cube: gpunet's one wrapper of ``scipy.stats.qmc.Sobol``.

The GPUNet paper (3.2) approximates the search space with networks drawn from a Sobol sequence; the
searchers start from Sobol designs too. Both draw their points here, so that one ``(d, seed, skip)`` names
one sequence everywhere: :meth:`gpunet.space.SearchSpace.sobol` maps the points to architecture vectors,
:func:`gpunet.search.simple.sobol_points` hands them to the searchers. scipy is imported on first use.

The scrambling is seeded with scipy's ``seed=`` argument (not ``rng=``, which scrambles differently): stored
runs depend on these exact sequences, and ``tests/test_space.py`` pins them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .errors import SpaceError

if TYPE_CHECKING:  # pragma: no cover
    from scipy.stats import qmc

#: Points drawn per step of :func:`sobol_chunks` (the sequence continues across steps; chunks of this size
#: keep a million 41-dimensional points out of memory at once).
SOBOL_CHUNK = 1 << 16


def sobol_chunks(d: int, n: int, *, seed: int = 0, skip: int = 0, chunk: int = SOBOL_CHUNK) -> Iterator[np.ndarray]:
    """Points ``skip .. skip+n-1`` of the scrambled Sobol sequence of ``(d, seed)``, in chunks.

    Args:
        d: dimensions (``d >= 1``).
        n: number of points (any ``n >= 0``; powers of two keep Sobol's balance properties exactly, other
            counts are accepted without scipy's warning).
        seed: the scrambling seed.
        skip: points of the sequence to skip first (to continue a sequence).
        chunk: points per yielded array.

    Returns:
        An iterator of ``m x d`` float64 arrays in ``[0, 1)``, ``m <= chunk``; together ``n`` rows, in
        sequence order.

    Raises:
        SpaceError: ``d < 1``, ``n < 0``, ``skip < 0`` or ``chunk < 1`` (at the call, not at the first chunk).
    """
    for name, value, minimum in (("d", d, 1), ("n", n, 0), ("skip", skip, 0), ("chunk", chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise SpaceError(f"sobol {name}", value, f"an integer >= {minimum}")
    from scipy.stats import qmc

    engine = qmc.Sobol(d=int(d), scramble=True, seed=seed)
    if skip:
        engine.fast_forward(int(skip))
    return _draw(engine, int(n), int(chunk))


def _draw(engine: "qmc.Sobol", n: int, chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, n, chunk):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "balance properties ... n is not a power of 2"
            points = engine.random(min(chunk, n - start))
        yield points


def sobol_unit(d: int, n: int, seed: int = 0, skip: int = 0) -> np.ndarray:
    """Points ``skip .. skip+n-1`` of the scrambled Sobol sequence of ``(d, seed)``: an ``n x d`` float64 array in
    ``[0, 1)`` (all at once; use :func:`sobol_chunks` for millions). Raises :class:`~gpunet.errors.SpaceError`
    as :func:`sobol_chunks` does."""
    whole = n if isinstance(n, (int, np.integer)) and n > 0 else 1
    chunks = list(sobol_chunks(d, n, seed=seed, skip=skip, chunk=whole))
    return chunks[0] if chunks else np.zeros((0, int(d)), dtype=np.float64)
