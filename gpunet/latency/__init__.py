"""The per-layer latency table, its measuring backends and the profiling work (GPUNet paper, 3.2).

Importing this package pulls in no torch, onnxruntime or tensorrt; each backend imports its library when it
is created.

Public API (what the controller and the profiler workers use):

Keys and table
    :class:`LatencyTarget` (backend, device, precision, batch size), :class:`LayerKey` (``.text``,
    ``.digest``, ``.to_dict()`` / ``.from_dict()``), :class:`LatencyTable` (``get``, ``get_many``,
    ``put``, ``put_many``, ``missing``, ``medians``), :class:`Measurement`.
(a) Missing layers, in batches
    :func:`plan_profiling(table, target, vectors=..., space=..., batch_size=16) <plan_profiling>` ->
    list of :class:`ProfileBatch` (``.to_dict()`` / ``.from_dict()``); also :func:`missing_layer_keys`,
    :func:`split_batches`.
(b) Measuring a batch on a profiler
    :func:`get_backend(name, **options) <get_backend>` (or :func:`backend_from_config`; backends live in
    :mod:`gpunet.latency.backends` and join with :func:`register_backend`) then :func:`measure_keys(keys, backend) <measure_keys>`
    -> ``[(LayerKey, Measurement)]``; or :func:`measure_batch(batch_dict, backend_config) <measure_batch>`
    -> JSON-ready dicts; :func:`results_from_dicts` turns them back for the table.
(c) Storing
    :meth:`LatencyTable.put`, :meth:`LatencyTable.put_many` (one transaction).
(d) Many estimates and tiers
    :meth:`SearchSpace.sobol <gpunet.space.SearchSpace.sobol>`, and in :mod:`gpunet.sampling`:
    :class:`~gpunet.sampling.LatencyEstimator`, :func:`~gpunet.sampling.tiers_from_targets`,
    :func:`~gpunet.sampling.stratify`.
Estimates of single networks and calibration
    :func:`estimate_latency`, :func:`compare`, :class:`Calibration`.
"""

from .backends import LatencyBackend, backend_from_config, get_backend, register_backend
from .errors import (
    BackendUnavailableError,
    KeyFormatError,
    LatencyError,
    MissingLayersError,
    TableError,
    TargetMismatchError,
    TierError,
)
from .estimate import (
    Calibration,
    FidelityReport,
    compare,
    estimate_latency,
    fit_calibration,
    layer_keys,
    leave_one_out,
    load_calibration,
    network_features,
    save_calibration,
)
from .keys import BACKEND_NAMES, PRECISIONS, LatencyTarget, LayerKey
from .profiling import (
    BuildReport,
    ProfileBatch,
    build_table,
    measure_batch,
    measure_keys,
    missing_layer_keys,
    plan_profiling,
    required_keys,
    results_from_dicts,
    results_to_dicts,
    split_batches,
)
from .table import LatencyTable, Measurement

__all__ = [
    "BACKEND_NAMES", "PRECISIONS", "backend_from_config", "BackendUnavailableError", "BuildReport", "Calibration", "FidelityReport",
    "KeyFormatError", "LatencyBackend", "LatencyError", "LatencyTable", "LatencyTarget", "LayerKey", "Measurement",
    "MissingLayersError", "ProfileBatch", "TableError", "TargetMismatchError", "TierError", "build_table", "compare",
    "estimate_latency", "fit_calibration", "get_backend", "layer_keys", "leave_one_out", "load_calibration", "measure_batch",
    "measure_keys", "missing_layer_keys", "network_features", "plan_profiling", "register_backend", "required_keys",
    "results_from_dicts", "results_to_dicts", "save_calibration", "split_batches",
]
