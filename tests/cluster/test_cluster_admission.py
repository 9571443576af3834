"""What the API server and the operator refuse, on the real control plane: specs the schema accepts but the
operator cannot (Failed within seconds, the field named, no children), changes of the frozen sections (CEL
transition rules), snake_case fields (strict field validation, and gpunet run alike), and a controller that never
answers (a condition and an exponential backoff, no hot loop). Last, deletion garbage-collects a search's own
claim.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from gpunet.rpc import pb_grpc, tls

from .actors import OperatorProcess, socket_address
from .conftest import OPERATOR_USER
from .install import ensure_namespace, exists, labelled, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

NS = "admission"
GROUP, VERSION, PLURAL = "nas.gpunet.dev", "v1alpha1", "nassearches"
FROZEN = "frozen"  # a valid search whose frozen sections the tests try to change


@dataclass
class Api:
    client: client.ApiClient

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.client)


@pytest.fixture(scope="module")
def api(admin: client.ApiClient, operator: OperatorProcess) -> Api:
    ensure_namespace(admin, NS)
    out = Api(admin)
    _create(out, FROZEN, {"latency": {"tiers": [0.5]}, "storage": {"existingClaim": "some-claim"}})
    return out


def _create(api: Api, name: str, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NASSearch", "metadata": {"name": name, "namespace": NS}, "spec": spec}
    return api.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body, **kwargs)


INVALID = {  # specs the schema accepts but the operator cannot: name -> (spec, the field the message names)
    "bad-kernel": ({"searchSpace": {"preset": "gpunet-tiny", "stages": {"2": {"kernel": [4]}}}}, "spec.searchSpace.stages[2].kernel"),
    "bad-option": ({"algorithm": {"name": "random", "options": {"n_init": 4}}}, "spec.algorithm.options.n_init"),
    "bad-option-value": ({"algorithm": {"name": "lamcts-bo", "options": {"leaf_size": 0}}}, "spec.algorithm.options.leaf_size"),
}


def test_invalid_specs_fail_within_seconds_naming_the_field_with_no_children(api: Api) -> None:
    started = time.monotonic()
    for name, (spec, _) in INVALID.items():
        _create(api, name, {"latency": {"tiers": [0.5]}, **spec})
    for name, (_, field) in INVALID.items():
        status = wait_for(f"{name} to fail", lambda: (st := (api.custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name).get("status") or {})).get("phase") == "Failed" and st, timeout=15)
        (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec" and ready["message"].startswith(field), ready
        assert labelled(api.client, NS, name) == [], f"{name} has children"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("section, change", [
    ("latency", {"tiers": [0.2]}), ("searchSpace", {"preset": "gpunet-tiny"}), ("algorithm", {"budget": 99}),
    ("training", {"epochs": 9}), ("storage", {"existingClaim": "other"}),
])
def test_admission_refuses_a_change_of_a_frozen_section(api: Api, section: str, change: dict[str, Any]) -> None:
    with pytest.raises(client.exceptions.ApiException) as info:
        api.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, FROZEN, {"spec": {section: change}})
    assert info.value.status == 422
    assert f"spec.{section}: Forbidden: spec.{section} is frozen" in json.loads(info.value.body)["message"], info.value.body


def test_snake_case_is_refused_by_the_server_and_by_gpunet_run(api: Api) -> None:
    from gpunet.spec import SpecError, parse_search

    spec = {"latency": {"tiers": [0.5], "batch_size": 2}}
    with pytest.raises(client.exceptions.ApiException) as info:
        _create(api, "snake", spec, field_validation="Strict")  # what kubectl apply asks for
    assert info.value.status == 400 and 'unknown field "spec.latency.batch_size"' in json.loads(info.value.body)["message"]
    with pytest.raises(SpecError, match=r"^spec.latency.batch_size: .*did you mean 'batchSize'"):
        parse_search({"apiVersion": f"{GROUP}/{VERSION}", "kind": "NASSearch", "metadata": {"name": "snake"}, "spec": spec})


@pytest.mark.parametrize("latency, words", [
    ({"backend": "tensorrt", "device": "cpu"}, "cuda with backend tensorrt"),
    ({"backend": "onnxruntime", "device": "cuda"}, "cpu with backend onnxruntime"),
    ({"device": "cuda", "precision": "fp16"}, "cpu with backend onnxruntime"),
    ({"backend": "torch", "precision": "fp16"}, "fp16 needs cuda"),
])
def test_impossible_latency_targets_are_refused_by_the_server_and_by_gpunet_run(api: Api, latency: dict, words: str) -> None:
    from gpunet.spec import SpecError, parse_search

    spec = {"latency": {"tiers": [0.5], **latency}}
    with pytest.raises(client.exceptions.ApiException) as info:
        _create(api, "impossible", spec)
    assert info.value.status == 422 and words in json.loads(info.value.body)["message"], info.value.body
    with pytest.raises(SpecError, match=words):
        parse_search({"apiVersion": f"{GROUP}/{VERSION}", "kind": "NASSearch", "metadata": {"name": "x"}, "spec": spec})


@pytest.mark.parametrize("val_split, refused", [(0.1, False), (50000, False), (2500.5, True)])
def test_val_split_is_a_fraction_or_a_whole_count_to_the_server_and_to_gpunet_run(admin: client.ApiClient, val_split: float,
                                                                                   refused: bool) -> None:
    from gpunet.spec import SpecError, parse_search

    ensure_namespace(admin, NS)
    spec = {"latency": {"tiers": [0.5]}, "training": {"dataset": {"valSplit": val_split}}}
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NASSearch", "metadata": {"name": "x"}, "spec": spec}
    if not refused:
        created = _create(Api(admin), "val-split", spec)
        assert created["spec"]["training"]["dataset"]["valSplit"] == val_split
        client.CustomObjectsApi(admin).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "val-split")
        assert parse_search(doc).training.dataset.val_split == val_split
        return
    with pytest.raises(client.exceptions.ApiException) as info:
        _create(Api(admin), "val-split", spec)
    assert info.value.status == 422 and "a whole count of images" in json.loads(info.value.body)["message"], info.value.body
    with pytest.raises(SpecError, match="a whole count of images"):
        parse_search(doc)


class FailingController(pb_grpc.SearchControllerServiceServicer):
    """A controller that is up but answers every call UNAVAILABLE (restarting); it counts the calls."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def GetStatus(self, request: Any, context: Any) -> Any:
        self.calls.append(time.monotonic())
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


def test_unreachable_controller_sets_a_condition_and_backs_off(api: Api, sockets: Path, control_plane: Any) -> None:
    """A search whose controller never answers: ControllerReachable=False once, polls spaced by an exponential
    backoff (counted at a controller that answers UNAVAILABLE) and no API request while nothing changes (counted
    in the API server's audit log of the operator's ServiceAccount)."""
    failing = FailingController()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchControllerServiceServicer_to_server(failing, server)
    _create(api, "down", {"latency": {"tiers": [0.5]}, "storage": {"size": "1Gi"}})
    core = client.CoreV1Api(api.client)
    secret = wait_for("the search's TLS Secret", lambda: exists(lambda: core.read_namespaced_secret("down-tls", NS))
                      and core.read_namespaced_secret("down-tls", NS))
    pem = {k: base64.b64decode(v) for k, v in secret.data.items()}  # served as its controller pod would
    server.add_secure_port(socket_address(sockets, NS, "down"), tls.server_credentials(pem["tls.crt"], pem["tls.key"]))
    server.start()
    try:
        cond = wait_for("ControllerReachable=False", lambda: next((c for c in (api.custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "down").get("status") or {}).get("conditions") or [] if c["type"] == "ControllerReachable"
            and c["status"] == "False"), None), timeout=30)
        assert cond["reason"] == "Unavailable" and "UNAVAILABLE" in cond["message"] and "backoff" in cond["message"]
        time.sleep(1.0)  # let the audit batch of that write reach the file
        window_start, calls_before = time.time(), len(failing.calls)
        time.sleep(10.0)
        calls = len(failing.calls) - calls_before
        requests = [e for e in control_plane.audit_events() if e["user"]["username"] == OPERATOR_USER
                    and "/nassearches/down" in e["requestURI"] and e["verb"] not in ("watch",)
                    and _audit_time(e) >= window_start]
        # 0.5 s polls without backoff would be 20 calls; with it 0.5, 1, 2, 4, 8 s apart, at most 4 in any 10 s.
        assert 1 <= calls <= 4, failing.calls
        assert len(requests) <= 1, [(e["verb"], e["requestURI"]) for e in requests]
    finally:
        server.stop(0)


def _audit_time(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def test_deletion_garbage_collects_the_searchs_own_claim(api: Api) -> None:
    assert "PersistentVolumeClaim/down-data" in labelled(api.client, NS, "down")
    for name in ("down", FROZEN, *INVALID):
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    wait_for("the searches to go", lambda: not api.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"], timeout=60)
    wait_for("the children, the claim too, to be collected", lambda: not labelled(api.client, NS, "down"), timeout=60)
