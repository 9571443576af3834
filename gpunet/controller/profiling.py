"""Stage 1 of the search: fill the latency table through profiler workers (GPUNet paper 3.2).

``spec.latency.samples`` networks are drawn with a Sobol sequence; the layer keys they need and the table lacks are
planned into :class:`gpunet.latency.ProfileBatch` es (:data:`gpunet.latency.profiling.DEFAULT_BATCH_SIZE` keys
each) and leased, one batch at a time, to profilers that ask for work. The latency target (backend, device name,
precision, batch size) is fixed by the first profiler that asks. A reported batch is stored in the table; layers a
profiler could not measure are remembered in the state and left out of the search. Batches are in memory only:
after a restart they are planned again from the table, which keeps every stored measurement.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING

from ..rpc import pb
from ..spec import SearchSpec
from .errors import InvalidRequestError, check_id, require
from .leases import BATCH, Lease, LeaseBook
from .state import PHASE_PROFILING, PHASE_SCALING, ControllerState

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..latency import LatencyTable, LatencyTarget, LayerKey, ProfileBatch

log = logging.getLogger(__name__)


class ProfilingStage:
    """The profilers' side of the controller: the plan of layer batches, their leases and the reports.

    Args:
        spec: the search.
        state: the controller's state (its ``target``, ``unmeasurable`` and ``phase`` are read and written here).
        table: the latency table (written only here, by :meth:`store`).
        leases: the search's lease book.
        lock: the controller's lock; :meth:`plan` takes it, every other method expects it held.
        batch_size: layer keys per batch.
    """

    def __init__(self, spec: SearchSpec, state: ControllerState, table: "LatencyTable", leases: LeaseBook,
                 lock: threading.RLock, batch_size: int) -> None:
        self.spec, self.space, self.state, self.table = spec, spec.space(), state, table
        self.leases, self.lock, self.batch_size = leases, lock, batch_size
        #: Planned batches not reported yet, in plan order (leased or waiting for a profiler).
        self.batches: dict[str, "ProfileBatch"] = {}
        self.ready = False
        self.layers_needed = 0
        self.layers_measured = 0
        self._samples: "np.ndarray | None" = None

    def samples(self) -> "np.ndarray":
        """The Sobol-sampled networks of stage 1, an ``n x 41`` int64 array (``n = spec.latency.samples``)."""
        if self._samples is None:
            self._samples = self.space.sobol(self.spec.latency.samples, seed=self.spec.algorithm.seed)
        return self._samples

    def target(self) -> "LatencyTarget | None":
        """The latency target, once the first profiler has named its device."""
        from ..latency import LatencyTarget

        return LatencyTarget.from_dict(self.state.target) if self.state.target else None

    # --- the driver's part ---------------------------------------------------------------------------------
    def plan(self) -> bool:
        """Plan the batches the table still lacks, when none is waiting or leased (slow: takes the lock only to
        apply the plan). Returns True when the table holds every layer the samples need."""
        target = self.target()
        if target is None:
            return False
        with self.lock:
            if self.batches and self.ready:
                return False
            skip = set(self.state.unmeasurable)
        from ..latency import plan_profiling, required_keys

        vectors = self.samples()
        if not self.layers_needed:
            self.layers_needed = len(required_keys(target, vectors=vectors, space=self.space))
        plan = plan_profiling(self.table, target, vectors=vectors, space=self.space, batch_size=self.batch_size,
                              exclude=skip)
        with self.lock:
            self.batches = {batch.batch_id: batch for batch in plan}
            missing = sum(len(b.keys) for b in plan)
            self.layers_measured = self.layers_needed - missing - len(skip)
            self.ready = True
            return not self.batches

    def add(self, plan: list["ProfileBatch"]) -> None:
        """More batches to measure after phase Profiling: the scaled networks of phase Scaling (call with the lock
        held). Their layers count in :meth:`progress`, so the table is incomplete again until they are measured."""
        for batch in plan:
            self.batches.setdefault(batch.batch_id, batch)
        self.layers_needed = max(self.layers_needed, self.layers_measured) + sum(len(b.keys) for b in plan)
        self.ready = True

    def abandon(self, reason: str) -> None:
        """Give up every planned batch (call with the lock held): its layers count as unmeasurable, so networks
        containing them are left out."""
        digests = {d for b in self.batches.values() for d in b.digests}
        for batch_id in list(self.batches):
            lease = self.leases.of(BATCH, batch_id)
            if lease is not None:
                self.leases.release(lease)
        self.batches.clear()
        if digests:
            self.state.unmeasurable = sorted(set(self.state.unmeasurable) | digests)
            log.warning("%d layers given up: %s", len(digests), reason)

    # --- RPCs (with the lock held) -------------------------------------------------------------------------
    def work(self, req: pb.WorkRequest, now: float) -> tuple[pb.WorkResponse, bool]:
        """A profiler's work request: a batch under a new lease, Wait or Done. The flag says the state changed
        (the first profiler fixed the latency target)."""
        from ..latency import LatencyTarget

        scaling = self.state.phase == PHASE_SCALING
        if self.state.phase != PHASE_PROFILING and not (scaling and self.batches):
            return pb.WorkResponse(done=pb.Done(reason="latency table complete")), False
        changed = False
        if self.state.target is None:
            require(bool(req.device) and "|" not in req.device, "device", req.device,
                    "the device a profiler measures on (its backend's device name, without '|')")
            lat = self.spec.latency
            self.state.target = LatencyTarget(lat.backend, req.device, lat.precision, lat.batch_size).to_dict()
            changed = True
        elif req.device and req.device != self.state.target["device"]:
            return pb.WorkResponse(done=pb.Done(
                reason=f"this search measures on {self.state.target['device']!r}; this profiler measures on {req.device!r}")), False
        if not self.ready:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=0.5, reason="planning the layers to profile")), changed
        batch = next((b for b in self.batches.values() if self.leases.of(BATCH, b.batch_id) is None), None)
        if batch is None:
            return pb.WorkResponse(wait=pb.Wait(retry_after_s=1.0, reason="all layer batches are leased")), changed
        lease = self.leases.grant(BATCH, batch.batch_id, req.worker_id, now)
        return pb.WorkResponse(layers=self.assignment(lease)), changed

    def assignment(self, lease: Lease) -> pb.ProfilingAssignment | None:
        """The assignment of a batch lease (None when its batch is gone)."""
        batch = self.batches.get(lease.work_id)
        if batch is None:
            return None
        lat = self.spec.latency
        return pb.ProfilingAssignment(batch_id=batch.batch_id, lease_id=lease.id, layer_keys_json=batch.keys_json,
                                      backend=lat.backend, device=lat.device, precision=lat.precision,
                                      batch_size=lat.batch_size, lease_deadline_unix_s=lease.deadline,
                                      lease_duration_s=self.leases.duration_s)

    @staticmethod
    def parse(req: pb.LatencyReport) -> list[tuple["LayerKey", pb.LayerMeasurement]]:
        """Check a latency report's fields (without the lock); raises :class:`InvalidRequestError`."""
        from ..latency import LayerKey

        check_id(req.worker_id, "worker_id")
        check_id(req.batch_id, "batch_id")
        check_id(req.lease_id, "lease_id")
        parsed = []
        for i, m in enumerate(req.measurements):
            try:
                key = LayerKey.from_json(m.layer_key_json)
            except Exception as exc:  # noqa: BLE001 - any parse error is the client's
                raise InvalidRequestError(f"measurements[{i}].layer_key_json", reason=str(exc)) from None
            if not m.error:
                require(math.isfinite(m.latency_ms) and m.latency_ms > 0, f"measurements[{i}].latency_ms", m.latency_ms,
                        "a latency in ms > 0")
                require(math.isfinite(m.spread_ms) and m.spread_ms >= 0, f"measurements[{i}].spread_ms", m.spread_ms, ">= 0")
            parsed.append((key, m))
        return parsed

    def store(self, req: pb.LatencyReport, parsed: list[tuple["LayerKey", pb.LayerMeasurement]]) -> pb.LatencyResponse:
        """Store a batch's measurements in the table and end its lease; a late or duplicate report changes nothing."""
        from ..latency import Measurement

        batch = self.batches.get(req.batch_id)
        lease = self.leases.of(BATCH, req.batch_id)
        if batch is None or lease is None or lease.id != req.lease_id:
            return pb.LatencyResponse(accepted=False, reason=f"late or duplicate: batch {req.batch_id} is not leased under {req.lease_id}")
        for i, (key, _) in enumerate(parsed):
            require(key.digest in batch.digests, f"measurements[{i}].layer_key_json", key.text,
                    f"a key of batch {req.batch_id}")
        backend = self.state.target["backend"]
        rows = [(key, Measurement(median_ms=float(m.latency_ms), spread_ms=float(m.spread_ms), runs=max(1, int(m.runs)),
                                  backend=backend, backend_version=m.backend_version or req.device or backend))
                for key, m in parsed if not m.error]
        failed = [key.digest for key, m in parsed if m.error]
        stored = self.table.put_many(rows) if rows else 0
        if failed:
            self.state.unmeasurable = sorted(set(self.state.unmeasurable) | set(failed))
            log.warning("%d layers of batch %s could not be measured: %s", len(failed), req.batch_id,
                        next(m.error for _, m in parsed if m.error))
        del self.batches[req.batch_id]
        self.leases.release(lease)
        self.layers_measured += len(rows)
        return pb.LatencyResponse(accepted=True, stored=int(stored))

    def progress(self) -> pb.LatencyTableProgress:
        leased = self.leases.count(BATCH)
        return pb.LatencyTableProgress(layers_needed=self.layers_needed, layers_measured=max(0, self.layers_measured),
                                       batches_queued=len(self.batches) - leased, batches_leased=leased)
