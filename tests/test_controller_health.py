"""gRPC health checking of the controller (``grpc.health.v1``) and the operator's asyncio client
(:class:`gpunet.rpc.client.AsyncControllerClient`), over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller_helpers import fake_profile, micro_spec, trainer_request, write_spec
from gpunet import rpc
from gpunet.controller import ControllerServer, SearchController
from gpunet.rpc import pb
from gpunet.rpc.client import AsyncControllerClient, ControllerUnavailable

TOKEN = "health-token"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str = "") -> int:
    """What the kubelet's ``grpc:`` probe asks: Health.Check in plaintext, with no token."""
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture
def server(tmp_path: Path):
    ctl = SearchController(micro_spec(), tmp_path, lease_s=10.0)
    fake_profile(ctl)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0", health_port=0).start()
    yield srv
    srv.stop()


def test_health_needs_no_token_on_either_port_and_the_service_still_does(server: ControllerServer) -> None:
    health_address = f"127.0.0.1:{server.health_port}"
    assert server.health_port not in (None, 0, server.port)
    for address in (server.address, health_address):
        assert check(address) == SERVING
        assert check(address, rpc.SERVICE_NAME) == SERVING
    with pytest.raises(grpc.RpcError) as err:
        check(health_address, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # the health exemption is for health only: the search service still wants the token
    stub = rpc.connect(server.address, None)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetStatus(pb.StatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # and the health port serves nothing but health
    with grpc.insecure_channel(health_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            rpc.pb_grpc.SearchControllerServiceStub(channel).GetStatus(pb.StatusRequest(), timeout=5,
                                                                       metadata=rpc.auth_metadata(TOKEN))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_watch_sees_not_serving_when_the_server_stops(tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(), tmp_path, lease_s=10.0)
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0", health_port=0).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.health_port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=rpc.SERVICE_NAME), timeout=20)
    assert next(watch).status == SERVING
    srv.stop(grace=2.0)
    assert next(watch).status == NOT_SERVING
    channel.close()


def test_the_controller_command_serves_health_on_its_health_port(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "search.yaml")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "gpunet.controller", "--spec", str(spec), "--state-dir", str(tmp_path / "state"),
                             "--host", "127.0.0.1", "--port", str(ports[0]), "--health-port", str(ports[1]), "--no-outputs"],
                            env={**os.environ, rpc.TOKEN_ENV: TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert check(f"127.0.0.1:{ports[1]}", rpc.SERVICE_NAME) == SERVING
                break
            except grpc.RpcError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the controller's health port never answered"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)


def test_async_client_calls_releases_checks_health_and_names_failures(server: ControllerServer) -> None:
    stub = rpc.connect(server.address, TOKEN)
    lease = stub.RequestWork(trainer_request("w1"), timeout=5).candidate.lease_id
    stub.channel.close()

    async def scenario() -> None:
        client = AsyncControllerClient(server.address, TOKEN, timeout_s=5.0)
        status = await client.status(max_candidates=5)
        assert status.search_name == "micro" and status.phase == pb.SEARCH_PHASE_SEARCHING
        # many releases at once on one channel: the mass-reclaim case; only the holder's lease goes
        replies = await asyncio.gather(*[client.release(f"w{i}", "preempted", "node reclaimed") for i in range(1, 51)])
        assert [r.released for r in replies] == [True] + [False] * 49
        assert replies[0].lease_id == lease
        assert await client.health() == "SERVING" and await client.health("") == "SERVING"
        await client.close()

        wrong = AsyncControllerClient(server.address, "wrong-token", timeout_s=5.0)
        with pytest.raises(ControllerUnavailable) as err:
            await wrong.status(max_candidates=1)
        assert err.value.code == "UNAUTHENTICATED" and "GetStatus" in str(err.value) and server.address in str(err.value)
        await wrong.close()

        down = AsyncControllerClient("127.0.0.1:1", TOKEN, timeout_s=0.5)
        with pytest.raises(ControllerUnavailable) as err:
            await down.release("w1", "failed")
        assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        await down.close()

    asyncio.run(scenario())
    assert server.controller.status(pb.StatusRequest()).preemptions == 1
