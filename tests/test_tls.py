"""TLS on the controller's gRPC port, with throwaway certificates made by openssl at test time: TLS end to end,
mutual TLS, the token on top, and clear errors for unusable certificate files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from controller_helpers import fake_profile, micro_spec, trainer_request
from gpunet.controller import ControllerServer, SearchController
from gpunet.controller.local import worker_command
from gpunet.rpc import TOKEN_ENV, connect, pb, tls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
TOKEN = "tls-test-token"


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_key_args(name: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key"]


def make_ca(d: Path, name: str) -> Path:
    _openssl(d, "req", "-x509", *_ec_key_args(name), "-days", "1", "-out", f"{name}.crt")
    return d / f"{name}.crt"


def make_cert(d: Path, ca: str, name: str, san: str) -> tuple[Path, Path]:
    """A leaf certificate for ``name`` signed by CA ``ca`` (``<ca>.crt``/``<ca>.key`` in ``d``)."""
    _openssl(d, "req", *_ec_key_args(name), "-out", f"{name}.csr")
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two CAs; a server certificate for 127.0.0.1/localhost, one only for "gpunet-controller", and client certificates
    of each CA."""
    d = tmp_path_factory.mktemp("pki")
    paths = {"ca": make_ca(d, "search-ca"), "other_ca": make_ca(d, "other-ca")}
    paths["server_cert"], paths["server_key"] = make_cert(d, "search-ca", "server", "DNS:localhost,IP:127.0.0.1")
    paths["named_cert"], paths["named_key"] = make_cert(d, "search-ca", "named", "DNS:gpunet-controller")
    paths["client_cert"], paths["client_key"] = make_cert(d, "search-ca", "worker", "DNS:worker")
    paths["rogue_cert"], paths["rogue_key"] = make_cert(d, "other-ca", "rogue", "DNS:worker")
    return paths


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> SearchController:
    ctl = SearchController(micro_spec(), tmp_path_factory.mktemp("state"), round_interval_s=0)
    fake_profile(ctl)
    yield ctl
    ctl.close()


def serve(ctl: SearchController, credentials: grpc.ServerCredentials | None) -> ControllerServer:
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0", credentials=credentials)
    srv.server.start()  # the module's controller is stepped by fake_profile; no driver thread needed
    return srv


def ask(srv: ControllerServer, credentials: grpc.ChannelCredentials | None, token: str | None = TOKEN,
        worker: str = "tls-trainer", options: list | None = None) -> pb.WorkResponse:
    stub = connect(srv.address, token, options=options, credentials=credentials)
    try:
        return stub.RequestWork(trainer_request(worker), timeout=5)
    finally:
        stub.channel.close()


def status(srv: ControllerServer, credentials: grpc.ChannelCredentials, options: list | None = None) -> pb.SearchStatus:
    stub = connect(srv.address, TOKEN, options=options, credentials=credentials)
    try:
        return stub.GetStatus(pb.StatusRequest(), timeout=5)
    finally:
        stub.channel.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_worker_gets_work_over_tls_and_plaintext_or_a_foreign_ca_get_nothing(pki, controller) -> None:
    srv = serve(controller, tls.server_credentials(pki["server_cert"], pki["server_key"]))
    try:
        assert srv.tls
        work = ask(srv, tls.channel_credentials(pki["ca"]), worker="tls-ok")
        assert work.WhichOneof("work") == "candidate" and work.candidate.candidate_id
        # A plaintext client, or one that trusts another CA, fails the handshake: no call reaches the controller.
        before = controller.status().active_workers
        assert code_of(lambda: ask(srv, None, worker="plain")) == grpc.StatusCode.UNAVAILABLE
        assert code_of(lambda: ask(srv, tls.channel_credentials(pki["other_ca"]), worker="foreign")) == grpc.StatusCode.UNAVAILABLE
        assert controller.leases.held_by("plain") is None and controller.leases.held_by("foreign") is None
        assert controller.status().active_workers == before
        # The token is still checked over TLS.
        creds = tls.channel_credentials(pki["ca"])
        assert code_of(lambda: ask(srv, creds, token="wrong", worker="bad-token")) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: ask(srv, creds, token=None, worker="no-token")) == grpc.StatusCode.UNAUTHENTICATED
        assert controller.leases.held_by("bad-token") is None and controller.leases.held_by("no-token") is None
    finally:
        srv.server.stop(0).wait()


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_search_ca(pki, controller) -> None:
    srv = serve(controller, tls.server_credentials(pki["server_cert"], pki["server_key"], client_ca=pki["ca"]))
    try:
        assert code_of(lambda: ask(srv, tls.channel_credentials(pki["ca"]), worker="no-cert")) == grpc.StatusCode.UNAVAILABLE
        rogue = tls.channel_credentials(pki["ca"], pki["rogue_cert"], pki["rogue_key"])
        assert code_of(lambda: ask(srv, rogue, worker="rogue")) == grpc.StatusCode.UNAVAILABLE
        assert controller.leases.held_by("no-cert") is None and controller.leases.held_by("rogue") is None
        mine = tls.channel_credentials(pki["ca"], pki["client_cert"], pki["client_key"])
        assert status(srv, mine).search_name == "micro"
        assert code_of(lambda: ask(srv, mine, token="wrong", worker="mtls-bad-token")) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.server.stop(0).wait()


def test_the_server_name_override_checks_the_certificate_against_another_name(pki, controller) -> None:
    srv = serve(controller, tls.server_credentials(pki["named_cert"].read_bytes(), pki["named_key"].read_bytes()))
    try:
        creds = tls.channel_credentials(pki["ca"].read_bytes())
        assert code_of(lambda: ask(srv, creds, worker="by-ip")) == grpc.StatusCode.UNAVAILABLE  # 127.0.0.1 is not in it
        assert status(srv, creds, options=tls.channel_options("gpunet-controller")).search_name == "micro"
    finally:
        srv.server.stop(0).wait()


def test_the_worker_process_profiles_over_mutual_tls_from_its_environment(pki, tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(tiers=(1.0,), tolerance=0.99), tmp_path, lease_s=10.0)
    creds = tls.server_credentials(pki["named_cert"], pki["named_key"], client_ca=pki["ca"])
    srv = ControllerServer(ctl, TOKEN, "127.0.0.1:0", credentials=creds).start()
    env = dict(os.environ, **{TOKEN_ENV: TOKEN, tls.TLS_CA_ENV: str(pki["ca"]), tls.TLS_CERT_ENV: str(pki["client_cert"]),
                              tls.TLS_KEY_ENV: str(pki["client_key"]), tls.TLS_SERVER_NAME_ENV: "gpunet-controller"})
    try:
        proc = subprocess.run([*worker_command(), "profiler", "--controller", srv.address, "--worker-id", "tls-profiler",
                               "--runs", "3", "--warmup", "1", "--give-up-after", "30"],
                              env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(ctl.table.medians()) == 14 and ctl.state.target["backend"] == "onnxruntime"
    finally:
        srv.stop()


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem", "mismatch", "encrypted", "key-is-cert"])
def test_unusable_certificate_files_are_named(pki, tmp_path: Path, case: str) -> None:
    cert, key = pki["server_cert"], pki["server_key"]
    expected = {
        "missing": f"TLS certificate: got '{tmp_path / 'nope.crt'}'; no such file; expected a PEM file",
        "directory": f"TLS certificate: got '{tmp_path}'; a directory, not a file",
        "not-pem": "TLS certificate: got '<9 bytes of PEM>'; no certificate in it",
        "mismatch": "TLS certificate: got '" + str(cert) + "'; the TLS private key does not belong to this certificate",
        "encrypted": "TLS private key: got '" + str(tmp_path / "enc.key") + "'; the key is encrypted",
        "key-is-cert": "TLS private key: got '" + str(cert) + "'; no private key in it",
    }[case]
    if case == "missing":
        cert = tmp_path / "nope.crt"
    elif case == "directory":
        cert = tmp_path
    elif case == "not-pem":
        cert = b"not a pem"
    elif case == "mismatch":
        key = pki["client_key"]
    elif case == "encrypted":
        _openssl(tmp_path, "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", "enc.key")
        key = tmp_path / "enc.key"
    else:
        key = cert
    with pytest.raises(tls.TLSError) as info:
        tls.server_credentials(cert, key)
    assert str(info.value).startswith(expected)
    assert isinstance(info.value, ValueError)


def test_half_configured_tls_is_refused_by_the_client_and_the_controller_command(pki, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(tls.TLSError, match="TLS private key: a client certificate needs its private key"):
        tls.channel_credentials(pki["ca"], cert=pki["client_cert"])
    with pytest.raises(tls.TLSError, match="TLS CA: got .*; no certificate in it"):
        tls.channel_credentials(pki["client_key"])
    from gpunet.controller.__main__ import main

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(tls.TLS_KEY_ENV, raising=False)
    spec = tmp_path / "search.yaml"
    assert main(["--spec", str(spec), "--state-dir", str(tmp_path / "s"), "--tls-cert", str(pki["server_cert"])]) == 2
    err = capsys.readouterr().err
    assert "gpunet.controller: error: TLS private key: a TLS server needs both its certificate and its private key; expected a PEM file (--tls-key or $GPUNET_TLS_KEY)" in err
    assert not (tmp_path / "s").exists(), "nothing is started or written"
    monkeypatch.setenv(tls.TLS_CLIENT_CA_ENV, str(pki["ca"]))
    assert main(["--spec", str(spec), "--state-dir", str(tmp_path / "s")]) == 2
    assert "mutual TLS needs the server's own certificate and key" in capsys.readouterr().err


def test_the_worker_command_names_an_unusable_ca_file(tmp_path: Path) -> None:
    env = dict(os.environ, **{TOKEN_ENV: TOKEN})
    proc = subprocess.run([sys.executable, "-m", "gpunet_worker", "trainer", "--controller", "127.0.0.1:1",
                           "--tls-ca", str(tmp_path / "missing-ca.crt")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"gpunet_worker: error: TLS CA: got '{tmp_path / 'missing-ca.crt'}'; no such file" in proc.stderr
