"""Sampling a search space, estimating the latency of many networks at once, and latency tiers (GPUNet paper, 3.2).

The paper approximates the search space by "sampling millions of networks from it" with a Sobol sequence,
estimates each one's latency as the sum of its layers' latencies from the latency table, and groups the
networks into latency tiers; each tier is then searched for accuracy (3.3). Three parts:

- Sobol sampling is a method of the space: :meth:`gpunet.space.SearchSpace.sobol` (on :mod:`gpunet.sobol`).
- :mod:`gpunet.sampling.grid`: :class:`LayerGrid`, every layer configuration a space can produce, numbered,
  so that the layers of ``n`` networks are found with array arithmetic; :class:`LatencyEstimator` binds a
  grid to a :class:`~gpunet.latency.LatencyTable`.
- :mod:`gpunet.sampling.tiers`: :func:`tiers_from_targets` / :func:`tiers_from_edges` and :func:`stratify`:
  tiers with counts and deterministic pools.

Shapes: ``vectors`` is an ``n x 41`` integer array (Table 2 order, values not indices); latencies are
``n`` float64 arrays in ms.
"""

from __future__ import annotations

from .grid import NUM_COLUMNS, LatencyEstimator, LayerGrid, layer_grid
from .tiers import (
    Tier,
    TierPool,
    canonical_vectors,
    first_unique_rows,
    parse_tolerance,
    stratify,
    tiers_from_edges,
    tiers_from_targets,
)


__all__ = [
    "NUM_COLUMNS", "LatencyEstimator", "LayerGrid", "Tier", "TierPool", "canonical_vectors", "first_unique_rows",
    "layer_grid", "parse_tolerance", "stratify", "tiers_from_edges", "tiers_from_targets",
]
