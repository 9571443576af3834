"""The per-search TLS material the operator makes (:mod:`gpunet_operator.certs`): a CA of its own that signs the
controller's server certificate, usable by the real controller server and the clients over TLS."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller_helpers import micro_spec
from gpunet import rpc
from gpunet.controller import ControllerServer, SearchController
from gpunet.rpc import pb, tls
from gpunet.rpc.client import AsyncControllerClient, ControllerUnavailable
from gpunet_operator import certs

SEARCH, NS, TOKEN = "gpunet-imagenet", "research", "certs-token"


@pytest.fixture(scope="module")
def material() -> dict[str, bytes]:
    return certs.issue(SEARCH, NS)


def test_the_ca_signs_a_server_certificate_for_the_controller_service_names(material: dict[str, bytes]) -> None:
    ca, cert = x509.load_pem_x509_certificate(material["ca.crt"]), x509.load_pem_x509_certificate(material["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == certs.controller_dns_names(SEARCH, NS)
    assert sans[0] == certs.server_name(SEARCH, NS) == "gpunet-imagenet-controller.research.svc"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=4 * 365)
    # only the server's key is handed out; the CA's is dropped, so no further certificate can be issued
    assert set(material) == {"ca.crt", "tls.crt", "tls.key"} and material["tls.key"].startswith(b"-----BEGIN PRIVATE KEY-----")
    tls.server_credentials(material["tls.crt"], material["tls.key"])  # the checks gpunet.rpc.tls makes: key matches
    assert certs.issue(SEARCH, NS)["ca.crt"] != material["ca.crt"]  # a CA per search (and per issue)


def test_the_controller_serves_it_and_clients_of_the_search_ca_get_through(material: dict[str, bytes], tmp_path: Path) -> None:
    ctl = SearchController(micro_spec(), tmp_path, lease_s=10.0)
    server = ControllerServer(ctl, TOKEN, "127.0.0.1:0",
                              credentials=tls.server_credentials(material["tls.crt"], material["tls.key"])).start()
    name = tls.channel_options(certs.server_name(SEARCH, NS))
    try:
        stub = rpc.connect(server.address, TOKEN, options=name, credentials=tls.channel_credentials(material["ca.crt"]))
        assert stub.GetStatus(pb.StatusRequest(), timeout=10).search_name == "micro"
        stub.channel.close()

        async def operator_side() -> None:
            client = AsyncControllerClient(server.address, TOKEN, credentials=tls.channel_credentials(material["ca.crt"]),
                                           options=name)
            assert (await client.status(max_candidates=1)).search_name == "micro"
            await client.close()
            other = certs.issue("other", NS)  # another search's CA does not vouch for this controller
            stranger = AsyncControllerClient(server.address, TOKEN, timeout_s=3.0,
                                             credentials=tls.channel_credentials(other["ca.crt"]), options=name)
            with pytest.raises(ControllerUnavailable) as err:
                await stranger.status(max_candidates=1)
            assert err.value.code == "UNAVAILABLE"
            await stranger.close()

        asyncio.run(operator_side())
        plain = rpc.connect(server.address, TOKEN)
        with pytest.raises(grpc.RpcError):
            plain.GetStatus(pb.StatusRequest(), timeout=3)
        plain.channel.close()
    finally:
        server.stop()
