"""The controller over real gRPC on 127.0.0.1: token authentication, status codes, /metrics."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet import rpc
from gpunet.controller import ControllerServer, SearchController
from gpunet.rpc import pb

TOKEN = "s3cret-token"


@pytest.fixture
def server(tmp_path: Path):
    ctl = SearchController(micro_spec(), tmp_path, lease_s=10.0)
    fake_profile(ctl)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0", metrics_port=0).start()
    yield srv
    srv.stop()


def call(srv: ControllerServer, token: str | None, method: str, request) -> tuple[grpc.StatusCode, str]:
    stub = rpc.connect(srv.address, token)
    try:
        getattr(stub, method)(request, timeout=5)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    finally:
        stub.channel.close()


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_missing_or_wrong_token_is_unauthenticated(server: ControllerServer, token: str | None) -> None:
    for method, request in [("RequestWork", trainer_request("w")), ("GetStatus", pb.StatusRequest()),
                            ("ReleaseLease", pb.ReleaseRequest(worker_id="w", reason=pb.RELEASE_REASON_SHUTDOWN))]:
        code, details = call(server, token, method, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED, method
        assert "token" in details


def test_right_token_is_served(server: ControllerServer) -> None:
    stub = rpc.connect(server.address, TOKEN)
    status = stub.GetStatus(pb.StatusRequest(max_candidates=5), timeout=5)
    assert status.phase == pb.SEARCH_PHASE_SEARCHING and status.search_name == "micro"
    work = stub.RequestWork(trainer_request("w1"), timeout=5)
    assert work.WhichOneof("work") == "candidate" and len(work.candidate.vector) == 41
    stub.channel.close()


@pytest.mark.parametrize(
    "method, request_, words",
    [
        ("RequestWork", pb.WorkRequest(kind=pb.WORKER_KIND_TRAINER), "worker_id: required"),
        ("RequestWork", pb.WorkRequest(worker_id="w"), "kind"),
        ("ReportProgress", pb.ProgressReport(worker_id="w", candidate_id="t0-c0000", lease_id="L", epoch=1, top1=-0.5,
                                             checkpoint_path="/x"), "top1"),
        ("ReportLatencies", pb.LatencyReport(worker_id="w", batch_id="b", lease_id="L",
                                             measurements=[pb.LayerMeasurement(layer_key_json="{not json")]), "layer_key_json"),
        ("ReleaseLease", pb.ReleaseRequest(worker_id="w"), "reason"),
        ("ReportProgress", pb.ProgressReport(worker_id="w", candidate_id="t0-c0000", lease_id="L", epoch=1, top1=0.5,
                                             checkpoint_path="/etc/passwd"), "checkpoint_path: got '/etc/passwd'"),
        ("GetStatus", pb.StatusRequest(max_candidates=-1), "max_candidates"),
    ],
)
def test_malformed_request_is_invalid_argument_with_a_message(server: ControllerServer, method: str, request_, words: str) -> None:
    code, details = call(server, TOKEN, method, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


def test_unknown_candidate_is_not_found(server: ControllerServer) -> None:
    code, details = call(server, TOKEN, "ReportResult", pb.ResultReport(worker_id="w", candidate_id="t9-c9999", lease_id="L", top1=0.5))
    assert code == grpc.StatusCode.NOT_FOUND and "t9-c9999" in details


def test_metrics_endpoint(server: ControllerServer) -> None:
    stub = rpc.connect(server.address, TOKEN)
    task = stub.RequestWork(trainer_request("w1"), timeout=5).candidate
    stub.ReleaseLease(pb.ReleaseRequest(worker_id="w1", lease_id=task.lease_id, reason=pb.RELEASE_REASON_PREEMPTED), timeout=5)
    stub.channel.close()
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    for _ in range(100):  # the driver thread refreshes the gauges every 0.1 s
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if 'gpunet_candidates{state="queued"}' in text and "gpunet_preemptions_total 1.0" in text:
            break
        time.sleep(0.05)
    assert 'gpunet_candidates{state="queued"}' in text
    assert 'gpunet_work_requests_total{answer="candidate",kind="trainer"} 1.0' in text
    assert "gpunet_preemptions_total 1.0" in text
    assert 'gpunet_best_top1{tier="0"}' in text and "gpunet_lease_expiries_total" in text
    assert 'gpunet_rpc_duration_seconds_count{method="RequestWork"}' in text


def test_every_input_error_is_invalid_argument_and_the_rest_keep_their_codes() -> None:
    from gpunet.controller.errors import (InvalidRequestError, NotReadyError, StateFileError, UnauthenticatedError,
                                          UnknownWorkError, grpc_status)
    from gpunet.errors import GpunetError, SpaceError
    from gpunet.latency.errors import KeyFormatError

    code = grpc.StatusCode
    cases = [
        (InvalidRequestError("top1", 1.5, "a fraction in [0, 1]"), code.INVALID_ARGUMENT, "top1: got 1.5; expected a fraction in [0, 1]"),
        (SpaceError("stage 4 expansion", 7, [2, 3], index=22), code.INVALID_ARGUMENT, "digit 22 (stage 4 expansion): got 7"),
        (KeyFormatError("kernel", 4, [3, 5]), code.INVALID_ARGUMENT, "kernel"),
        (UnknownWorkError("candidate_id", "t9", reason="not a candidate"), code.NOT_FOUND, "candidate_id: got 't9'; not a candidate"),
        (UnauthenticatedError(), code.UNAUTHENTICATED, "authorization: missing or wrong token"),
        (NotReadyError(), code.UNAVAILABLE, "controller: not ready"),
        (StateFileError("/x/state.sqlite", reason="corrupt"), code.INTERNAL, "StateFileError: /x/state.sqlite: corrupt"),
        (RuntimeError("boom"), code.INTERNAL, "RuntimeError: boom"),
    ]
    for exc, expected_code, words in cases:
        got, message = grpc_status(exc)
        assert got == expected_code and words in message, (exc, got, message)
        assert isinstance(exc, GpunetError) or exc.__class__ in (RuntimeError, KeyFormatError)
