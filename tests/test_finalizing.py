"""Phase Finalizing: the tier winners are measured end to end by a profiler of the target device, the result files
are written, and only then is the search Succeeded; it never hangs when no profiler comes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.controller import InvalidRequestError, SearchController
from gpunet.controller.finalizing import FINALIZING_FILE, MAX_ATTEMPTS
from gpunet.rpc import pb

DEVICE = "test-cpu"  # the fake profiler's device: the search's latency target


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def finished_search(tmp_path: Path, clock: Clock, budget: int = 2, device: str = DEVICE, **kwargs) -> SearchController:
    """A micro search whose every candidate got a result, now in phase Finalizing."""
    ctl = SearchController(micro_spec(budget=budget), tmp_path, lease_s=10.0, clock=clock, round_interval_s=0,
                           results=True, **kwargs)
    fake_profile(ctl, device=device)
    for i in range(20):
        ctl.step()
        answer = ctl.request_work(trainer_request(f"w{i}"))
        if answer.WhichOneof("work") == "candidate":
            task = answer.candidate
            assert ctl.report_result(pb.ResultReport(worker_id=f"w{i}", candidate_id=task.candidate_id, lease_id=task.lease_id,
                                                     top1=0.5 + i / 100, epochs=2, checkpoint_path=task.checkpoint_path)).accepted
        if ctl.state.phase == "Finalizing":
            break
    assert ctl.state.phase == "Finalizing"
    return ctl


def profiler(worker_id: str = "p1", device: str = DEVICE) -> pb.WorkRequest:
    return pb.WorkRequest(worker_id=worker_id, kind=pb.WORKER_KIND_PROFILER, device=device)


def network_report(task: pb.NetworkMeasurementAssignment, worker_id: str = "p1", **measurement) -> pb.LatencyReport:
    m = {"latency_ms": 0.07, "spread_ms": 0.001, "runs": 20, "backend_version": "onnxruntime 9.9", "device_name": DEVICE}
    return pb.LatencyReport(worker_id=worker_id, batch_id=task.measurement_id, lease_id=task.lease_id,
                            network=pb.NetworkMeasurement(**{**m, **measurement}))


def test_winner_is_measured_on_a_profiler_then_results_are_written_before_succeeded(tmp_path: Path) -> None:
    clock = Clock()
    ctl = finished_search(tmp_path, clock)
    assert ctl.request_work(trainer_request("late-trainer")).WhichOneof("work") == "done"
    other = ctl.request_work(profiler("p-other", "Another GPU"))
    assert other.WhichOneof("work") == "done" and "measures on 'test-cpu'" in other.done.reason

    task = ctl.request_work(profiler()).network
    best = max(ctl.candidates(), key=lambda c: (c.top1, c.id))
    assert task.measurement_id == f"tier-0-{best.id}" and task.backend == "onnxruntime" and task.batch_size == 1
    assert json.loads(task.architecture_json) == ctl.space.decode(best.vector).to_dict()
    assert ctl.request_work(profiler()).network.lease_id == task.lease_id, "asking again renews the same lease"
    assert ctl.request_work(profiler("p2")).WhichOneof("work") == "wait", "the only network is leased"
    ctl.step()
    assert ctl.state.phase == "Finalizing" and not (tmp_path / "hub.json").exists(), "nothing written before it is measured"

    with pytest.raises(InvalidRequestError, match="network.device_name: got 'Another GPU'; not the search's target device"):
        ctl.report_latencies(network_report(task, device_name="Another GPU"))
    assert ctl.report_latencies(network_report(task)).accepted
    assert not ctl.report_latencies(network_report(task)).accepted, "a duplicate changes nothing"
    ctl.step()
    assert ctl.state.phase == "Succeeded"
    hub = json.loads((tmp_path / "hub.json").read_text())
    tier = hub["tiers"][0]
    assert hub["phase"] == "Succeeded" and tier["candidate_id"] == best.id
    assert tier["latency_ms_measured"] == pytest.approx(0.07) and tier["latency_measurement_error"] is None
    assert tier["latency_measured_on"] == {"backend": "onnxruntime", "backend_version": "onnxruntime 9.9", "device": DEVICE,
                                           "precision": "fp32", "batch_size": 1, "runs": 20, "worker_id": "p1"}
    assert hub["target"]["device"] == DEVICE  # where the estimates' layer latencies were measured
    assert (tmp_path / "candidates.jsonl").exists() and f"on {DEVICE} (20 runs, profiler p1)" in (tmp_path / "hub.md").read_text()
    assert ctl.request_work(profiler()).WhichOneof("work") == "done"
    ctl.close()


def test_no_profiler_within_the_timeout_ends_finalizing_with_the_reason(tmp_path: Path) -> None:
    clock = Clock()
    ctl = finished_search(tmp_path, clock, finalize_timeout_s=60.0)
    ctl.step()
    assert ctl.state.phase == "Finalizing" and "measured 0/1 networks" in ctl.state.message
    clock.now += 61
    ctl.step()
    assert ctl.state.phase == "Succeeded"
    tier = json.loads((tmp_path / "hub.json").read_text())["tiers"][0]
    assert tier["latency_ms_measured"] is None and tier["latency_measured_on"] is None
    assert tier["latency_measurement_error"] == "no profiler on 'test-cpu' measured it within 60 s of phase Finalizing"
    assert tier["candidate_id"] and tier["top1"] > 0, "the trained winner is in the hub all the same"
    ctl.close()


def test_expired_leases_and_errors_count_as_tries_then_the_measurement_is_given_up(tmp_path: Path) -> None:
    clock = Clock()
    ctl = finished_search(tmp_path, clock)
    task = ctl.request_work(profiler("p1")).network
    clock.now += 11  # the profiler died: its lease expires
    ctl.step()
    again = ctl.request_work(profiler("p2")).network
    assert again.measurement_id == task.measurement_id and again.lease_id != task.lease_id
    assert not ctl.report_latencies(network_report(task, "p1")).accepted, "the expired lease's late report is refused"
    assert ctl.report_latencies(network_report(again, "p2", error="RuntimeError: CUDA out of memory", latency_ms=0)).accepted
    third = ctl.request_work(profiler("p3")).network
    assert ctl.report_latencies(network_report(third, "p3", error="RuntimeError: CUDA out of memory", latency_ms=0)).accepted
    saved = json.loads((tmp_path / FINALIZING_FILE).read_text())["networks"][0]
    assert saved["attempts"] == MAX_ATTEMPTS == 3 and saved["given_up"] and saved["result"] is None
    assert ctl.request_work(profiler("p4")).WhichOneof("work") == "done"
    ctl.step()
    assert ctl.state.phase == "Succeeded"
    tier = json.loads((tmp_path / "hub.json").read_text())["tiers"][0]
    assert tier["latency_measurement_error"] == "3 tries failed; last: RuntimeError: CUDA out of memory"
    ctl.close()


def test_malformed_network_reports_are_refused(tmp_path: Path) -> None:
    ctl = finished_search(tmp_path, Clock())
    task = ctl.request_work(profiler()).network
    for bad, message in ((dict(latency_ms=-1.0), "network.latency_ms: got -1.0"),
                         (dict(latency_ms=float("nan")), "network.latency_ms: got nan"),
                         (dict(spread_ms=-0.5), "network.spread_ms"), (dict(runs=0), "network.runs: got 0"),
                         (dict(device_name=""), "network.device_name: required")):
        with pytest.raises(InvalidRequestError, match=message):
            ctl.report_latencies(network_report(task, **bad))
    mixed = network_report(task)
    mixed.measurements.add(layer_key_json="{}", latency_ms=1.0)
    with pytest.raises(InvalidRequestError, match="a network report carries no layer measurements"):
        ctl.report_latencies(mixed)
    assert ctl.report_latencies(network_report(task)).accepted, "the lease survived the refused reports"
    ctl.close()


def test_a_restart_in_finalizing_keeps_the_measurement_and_finishes(tmp_path: Path) -> None:
    clock = Clock()
    ctl = finished_search(tmp_path, clock, budget=2)
    task = ctl.request_work(profiler()).network
    assert ctl.report_latencies(network_report(task)).accepted
    ctl.close()  # stopped before the driver wrote the results
    assert not (tmp_path / "hub.json").exists()

    ctl2 = SearchController(micro_spec(budget=2), tmp_path, lease_s=10.0, clock=clock, round_interval_s=0, results=True)
    assert ctl2.state.phase == "Finalizing"
    assert ctl2.request_work(profiler()).WhichOneof("work") == "done", "the measurement is not made twice"
    ctl2.step()
    assert ctl2.state.phase == "Succeeded"
    assert json.loads((tmp_path / "hub.json").read_text())["tiers"][0]["latency_ms_measured"] == pytest.approx(0.07)
    ctl2.close()


def test_without_results_finalizing_passes_straight_to_succeeded(tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(budget=1), tmp_path, clock=Clock(), round_interval_s=0)
    fake_profile(ctl)
    task = ctl.request_work(trainer_request("w")).candidate
    ctl.report_result(pb.ResultReport(worker_id="w", candidate_id=task.candidate_id, lease_id=task.lease_id, top1=0.5,
                                      epochs=2, checkpoint_path=task.checkpoint_path))
    ctl.step()
    assert ctl.state.phase == "Succeeded" and not (tmp_path / "hub.json").exists()
    ctl.close()


def test_a_real_profiler_worker_measures_the_winner_over_grpc(tmp_path: Path) -> None:
    from gpunet.controller import ControllerServer
    from gpunet.latency import get_backend
    from gpunet.rpc.client import ControllerClient
    from gpunet_worker.profiler import ProfilerWorker

    backend = get_backend("onnxruntime", threads=1, runs=5, warmup=1)
    ctl = finished_search(tmp_path, Clock(), budget=1, device=backend.device_name())
    srv = ControllerServer(ctl, "finalizing-token", "127.0.0.1:0")
    srv.server.start()  # the driver thread stays off: the test steps the controller itself
    try:
        worker = ProfilerWorker(ControllerClient(srv.address, "finalizing-token"), "p-real", backend)
        assert worker.run() == 0  # measures the network, then hears "done"
        ctl.step()
        assert ctl.state.phase == "Succeeded"
        tier = json.loads((tmp_path / "hub.json").read_text())["tiers"][0]
        assert tier["latency_ms_measured"] > 0 and tier["latency_measured_on"]["device"] == backend.device_name()
        assert tier["latency_measured_on"]["backend_version"].startswith("onnxruntime ")
    finally:
        srv.server.stop(0).wait()
        ctl.close()
        backend.close()
