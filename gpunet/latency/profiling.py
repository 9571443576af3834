"""Profiling work: which layers a set of networks needs that the table lacks, in batches, and measuring them.

This is the interface between the latency table and whoever fills it (GPUNet paper, 3.2: "we parallelize
the curation of the latency table over multi-GPUs"):

- the controller calls :func:`plan_profiling` (or :func:`missing_layer_keys` + :func:`split_batches`) to
  get :class:`ProfileBatch` es of missing keys, hands them to profiler workers (``ProfileBatch.to_dict``
  travels as JSON), and stores what comes back with :meth:`LatencyTable.put_many`;
- a profiler worker calls :func:`measure_keys` (or :func:`measure_batch` with a backend config dict) and
  returns :func:`results_to_dicts`;
- ``gpunet latency build`` calls :func:`build_table`: a resumable loop that measures only missing keys and
  commits after each one, so a killed build loses at most the layer it was measuring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Sequence

from ..arch import Architecture
from .errors import LatencyError
from .keys import LatencyTarget, LayerKey, text_digest
from .table import LatencyTable, Measurement

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..space import SearchSpace
    from .backends import LatencyBackend

#: Layer keys per profiling batch (the one default, used by the controller and :func:`plan_profiling`): a few seconds
#: to a minute of work for one profiler, small enough that a preempted profiler loses little.
DEFAULT_BATCH_SIZE = 16


def required_keys(target: LatencyTarget, *, archs: Iterable[Architecture] = (), vectors: "np.ndarray | None" = None,
                  space: "SearchSpace | None" = None) -> list[LayerKey]:
    """Unique layer keys that the given networks contain, sorted by key text (deterministic).

    Args:
        target: backend/device/precision/batch size of the keys.
        archs: networks as :class:`Architecture` s (scalar path, for a few networks).
        vectors: networks as an ``n x 41`` array of ``space`` (vectorised path via
            :class:`gpunet.sampling.LayerGrid`, for many networks).
        space: the space of ``vectors`` (required with ``vectors``).
    """
    keys: dict[str, LayerKey] = {}
    for arch in archs:
        for spec in arch.layer_specs(target.batch_size):
            key = LayerKey.from_spec(spec, target)
            keys.setdefault(key.digest, key)
    if vectors is not None:
        if space is None:
            raise LatencyError("space: got None; expected the SearchSpace of the vectors")
        from ..sampling import layer_grid

        grid = layer_grid(space, target)
        for key in grid.keys(grid.needed_ids(vectors)):
            keys.setdefault(key.digest, key)
    return sorted(keys.values(), key=lambda k: k.text)


def missing_layer_keys(table: LatencyTable, target: LatencyTarget, *, archs: Iterable[Architecture] = (),
                       vectors: "np.ndarray | None" = None, space: "SearchSpace | None" = None) -> list[LayerKey]:
    """The keys of :func:`required_keys` that ``table`` lacks, sorted by key text."""
    return table.missing(required_keys(target, archs=archs, vectors=vectors, space=space))


@dataclass(frozen=True)
class ProfileBatch:
    """A unit of profiling work: layer keys for one profiler to measure (the controller leases it to a profiler
    worker; ``gpunet latency build`` and tools use it directly).

    Attributes:
        batch_id: 16 hex digits, a hash of the member keys' digests (the same keys give the same id, so
            re-planning after a restart reproduces the ids of unfinished batches).
        keys: the layer keys, all of one :class:`LatencyTarget`.
    """

    batch_id: str
    keys: tuple[LayerKey, ...]

    @classmethod
    def of(cls, keys: Sequence[LayerKey]) -> "ProfileBatch":
        return cls(text_digest(",".join(k.digest for k in keys)), tuple(keys))

    @property
    def target(self) -> LatencyTarget:
        return self.keys[0].target

    @cached_property
    def keys_json(self) -> list[str]:
        """The keys as JSON texts, as they travel in ``ProfilingAssignment.layer_keys_json``."""
        return [k.to_json() for k in self.keys]

    @cached_property
    def digests(self) -> frozenset[str]:
        """The keys' digests (a report may only carry keys of its batch)."""
        return frozenset(k.digest for k in self.keys)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"batch_id": str, "keys": [LayerKey.to_dict(), ...]}``."""
        return {"batch_id": self.batch_id, "keys": [k.to_dict() for k in self.keys]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProfileBatch":
        """Inverse of :meth:`to_dict`; raises :class:`~gpunet.latency.errors.KeyFormatError` for a bad key."""
        keys = tuple(LayerKey.from_dict(k) for k in data["keys"])
        batch = cls.of(keys)
        if data.get("batch_id", batch.batch_id) != batch.batch_id:
            raise LatencyError(f"batch_id: got {data.get('batch_id')!r}; expected {batch.batch_id!r} (the hash of its keys)")
        return batch


def split_batches(keys: Sequence[LayerKey], batch_size: int = DEFAULT_BATCH_SIZE) -> list[ProfileBatch]:
    """Split keys into batches of at most ``batch_size`` (order kept; keys of mixed targets never share a batch)."""
    if batch_size < 1:
        raise LatencyError(f"batch_size: got {batch_size}; expected an integer >= 1")
    by_target: dict[LatencyTarget, list[LayerKey]] = {}
    for key in keys:
        by_target.setdefault(key.target, []).append(key)
    return [ProfileBatch.of(group[i : i + batch_size]) for group in by_target.values() for i in range(0, len(group), batch_size)]


def plan_profiling(table: LatencyTable, target: LatencyTarget, *, archs: Iterable[Architecture] = (),
                   vectors: "np.ndarray | None" = None, space: "SearchSpace | None" = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, exclude: Collection[str] = ()) -> list[ProfileBatch]:
    """The controller's question (a): the missing keys of these networks, in batches for independent profilers.

    ``exclude`` holds digests of keys to leave out (e.g. layers a profiler could not measure).
    Typical use: ``plan_profiling(table, target, vectors=np.concatenate([p.vectors for p in pools]), space=space)``.
    Deterministic for the same table state and networks.
    """
    missing = missing_layer_keys(table, target, archs=archs, vectors=vectors, space=space)
    return split_batches([k for k in missing if k.digest not in exclude] if exclude else missing, batch_size)


def measure_keys(keys: Sequence[LayerKey], backend: "LatencyBackend", *,
                 on_result: Callable[[LayerKey, Measurement], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 chunk_size: int | None = None) -> list[tuple[LayerKey, Measurement]]:
    """A profiler worker's job (b): measure each key's layer with ``backend``.

    Args:
        keys: keys to measure; all must be for ``backend.target()`` (checked before any measuring).
        backend: a configured backend (:func:`gpunet.latency.backends.get_backend`).
        on_result: called after each measurement (e.g. to store it at once or report progress).
        should_stop: polled before each chunk; when it returns True, the results so far are returned
            (e.g. on SIGTERM of a preemptible node).
        chunk_size: keys measured together, their runs interleaved in ``backend.rounds`` rounds
            (default: 1 when ``backend.rounds == 1``, else 16).

    Returns:
        ``[(key, Measurement), ...]`` in the order of ``keys`` (a prefix of it when stopped).

    Raises:
        TargetMismatchError: a key for another backend/device/precision/batch size.
        LatencyError: a layer could not be built or measured (names the key).
    """
    for key in keys:
        backend.check_key(key)
    size = chunk_size or (1 if backend.rounds == 1 else 16)
    out: list[tuple[LayerKey, Measurement]] = []
    for i in range(0, len(keys), size):
        if should_stop is not None and should_stop():
            break
        chunk = list(keys[i : i + size])
        try:
            measured = backend.measure_layers(chunk)
        except LatencyError:
            raise
        except Exception as exc:  # noqa: BLE001 - add the keys to any library error
            where = chunk[0].text if len(chunk) == 1 else f"{len(chunk)} layers from {chunk[0].text}"
            raise LatencyError(f"measuring {where}: {type(exc).__name__}: {exc}") from exc
        for key, m in zip(chunk, measured):
            out.append((key, m))
            if on_result is not None:
                on_result(key, m)
    return out


_BACKENDS: dict[tuple[Any, ...], "LatencyBackend"] = {}


def measure_batch(batch: ProfileBatch | Mapping[str, Any], backend_config: Mapping[str, Any],
                  **kwargs: Any) -> list[dict[str, Any]]:
    """Measure a batch for a worker speaking JSON: ``batch`` as :class:`ProfileBatch` or its dict, the backend as
    ``{"backend": "onnxruntime", "threads": 1, "runs": 50, ...}`` (options of :func:`get_backend`); returns
    :func:`results_to_dicts`. The backend is created once per config and reused by later calls."""
    from .backends import backend_from_config

    if not isinstance(batch, ProfileBatch):
        batch = ProfileBatch.from_dict(batch)
    cache_key = tuple(sorted(dict(backend_config).items()))
    backend = _BACKENDS.get(cache_key)
    if backend is None:
        backend = _BACKENDS[cache_key] = backend_from_config(backend_config)
    return results_to_dicts(measure_keys(batch.keys, backend, **kwargs))


def results_to_dicts(results: Iterable[tuple[LayerKey, Measurement]]) -> list[dict[str, Any]]:
    """``[{"key": LayerKey.to_dict(), "measurement": Measurement.to_dict()}, ...]`` (JSON-ready)."""
    return [{"key": k.to_dict(), "measurement": m.to_dict()} for k, m in results]


def results_from_dicts(items: Iterable[Mapping[str, Any]]) -> list[tuple[LayerKey, Measurement]]:
    """Inverse of :func:`results_to_dicts`, ready for :meth:`LatencyTable.put_many`."""
    return [(LayerKey.from_dict(d["key"]), Measurement.from_dict(d["measurement"])) for d in items]


@dataclass
class BuildReport:
    """Outcome of :func:`build_table`.

    Attributes:
        required: unique keys the networks need.
        already: of them, keys that were in the table before (not measured again).
        measured: keys measured and stored by this run.
        seconds: wall time of the measuring.
    """

    required: int
    already: int
    measured: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def layers_per_minute(self) -> float:
        return 60.0 * self.measured / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"required": self.required, "already": self.already, "measured": self.measured,
                "seconds": round(self.seconds, 3), "layers_per_minute": round(self.layers_per_minute, 1),
                "interrupted": self.interrupted}


def build_table(table: LatencyTable, backend: "LatencyBackend", keys: Sequence[LayerKey], *,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, chunk_size: int | None = None) -> BuildReport:
    """Measure the keys that ``table`` lacks and store each at once (resumable: a rerun measures only the rest).

    Args:
        table: the table (opened for writing).
        backend: the backend; ``keys`` must be for its target.
        keys: the keys wanted (e.g. :func:`required_keys`).
        progress: called as ``progress(done, total)`` after each stored key (total = keys missing at start).
        should_stop: polled before each chunk of keys; True stops cleanly (``report.interrupted``).
        chunk_size: keys measured together (see :func:`measure_keys`); a killed build loses at most one chunk.
    """
    missing = table.missing(keys)
    report = BuildReport(required=len({k.digest for k in keys}), already=0)
    report.already = report.required - len(missing)
    start = time.perf_counter()

    def store(key: LayerKey, m: Measurement) -> None:
        table.put(key, m)
        report.measured += 1
        if progress is not None:
            progress(report.measured, len(missing))

    measure_keys(missing, backend, on_result=store, should_stop=should_stop, chunk_size=chunk_size)
    report.seconds = time.perf_counter() - start
    report.interrupted = report.measured < len(missing)
    return report
