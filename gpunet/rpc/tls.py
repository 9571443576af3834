"""TLS on the controller's gRPC port: server and channel credentials from PEM files or PEM bytes (torch-free).

- Server (:func:`server_credentials`): its certificate chain and private key; with a client CA, mutual TLS: every
  client must present a certificate signed by that CA, or the handshake fails before any call is made.
- Client (:func:`channel_credentials`): the CA that signed the server's certificate (default: the system's roots)
  and, for mutual TLS, its own certificate and key. :func:`channel_options` overrides the name the server's
  certificate is checked against (tests, or an address that is not in the certificate).

TLS protects the token and the messages on the wire and proves the server's identity; the token
(``authorization: Bearer ...`` metadata, :mod:`gpunet.controller.service`) still authenticates every call on top.

Every input is checked before gRPC sees it (gRPC reports a bad key only as a failed handshake, later): a missing
or unreadable file, a file that is not PEM, an encrypted key, a key that does not belong to the certificate, or a
CA bundle without a certificate raises :class:`TLSError`, which names the part and the file. The checks use the
standard library's :mod:`ssl` (OpenSSL), so nothing here needs more than ``grpcio``.

The environment variables below are what the controller and worker pods set (see ``python -m gpunet.controller
--help`` and ``python -m gpunet_worker --help``).
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from pathlib import Path
from typing import Any, Union

import grpc

from ..errors import NO_VALUE, GpunetError

#: Controller: its certificate chain, private key and (for mutual TLS) the CA its clients' certificates must chain to.
TLS_CERT_ENV, TLS_KEY_ENV, TLS_CLIENT_CA_ENV = "GPUNET_TLS_CERT", "GPUNET_TLS_KEY", "GPUNET_TLS_CLIENT_CA"
#: Workers: the CA that signed the controller's certificate, and the name to check it against instead of the host.
TLS_CA_ENV, TLS_SERVER_NAME_ENV = "GPUNET_TLS_CA", "GPUNET_TLS_SERVER_NAME"
#: Workers: set to 1 to use TLS with the system's CA roots (implied by any other TLS setting).
TLS_ENV = "GPUNET_TLS"

#: A PEM source: a path to a PEM file, or the PEM bytes themselves (e.g. from a Kubernetes Secret).
PemSource = Union[str, "os.PathLike[str]", bytes]

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----")
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")


class TLSError(GpunetError, ValueError):
    """A TLS certificate, key or CA that cannot be used; the field names the part (``"TLS certificate"``, ...), the
    value is the file (or the size of PEM bytes given inline)."""


def _shown(source: PemSource) -> Any:
    return f"<{len(source)} bytes of PEM>" if isinstance(source, bytes) else str(source)


def read_pem(source: PemSource, part: str, *, key: bool = False) -> bytes:
    """The PEM bytes of ``source`` (a path or the bytes), checked to hold a certificate (or, with ``key``, one
    unencrypted private key).

    Raises:
        TLSError: no such file, unreadable, empty, or not PEM of the expected kind.
    """
    shown = _shown(source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TLSError(part, shown, "a PEM file", reason="no such file") from None
        except IsADirectoryError:
            raise TLSError(part, shown, "a PEM file", reason="a directory, not a file") from None
        except OSError as exc:
            raise TLSError(part, shown, "a readable PEM file", reason=f"unreadable ({exc.strerror or exc})") from None
    if key:
        if _ENCRYPTED_KEY.search(data):
            raise TLSError(part, shown, "an unencrypted PEM private key",
                           reason="the key is encrypted (gRPC cannot ask for a passphrase)")
        if not _PRIVATE_KEY.search(data):
            raise TLSError(part, shown, "a PEM private key ('-----BEGIN PRIVATE KEY-----')", reason="no private key in it")
    elif not _CERTIFICATE.search(data):
        raise TLSError(part, shown, "PEM certificates ('-----BEGIN CERTIFICATE-----')", reason="no certificate in it")
    return data


def _check_pair(cert: bytes, key: bytes, cert_source: PemSource, part: str) -> None:
    """OpenSSL loads ``cert`` with ``key`` (which fails when the key is not the certificate's)."""
    with tempfile.TemporaryDirectory(prefix="gpunet-tls-") as tmp:  # ssl loads chains from files only
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
                raise TLSError(part, _shown(cert_source), "the private key of this certificate",
                               reason="the TLS private key does not belong to this certificate") from None
            raise TLSError(part, _shown(cert_source), "a PEM certificate chain and its private key",
                           reason=f"OpenSSL cannot load them ({exc.reason or exc})") from None


def _check_ca(ca: bytes, source: PemSource, part: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise TLSError(part, _shown(source), "PEM CA certificates", reason=f"OpenSSL cannot load them ({exc})") from None


def server_credentials(cert: PemSource, key: PemSource, client_ca: PemSource | None = None) -> grpc.ServerCredentials:
    """Credentials of a TLS server port (``grpc.Server.add_secure_port``).

    Args:
        cert: the server's certificate chain (leaf first), a path or PEM bytes. Its subject alternative names must
            hold the name clients connect to (e.g. the Kubernetes Service's DNS name).
        key: the certificate's private key (unencrypted PEM).
        client_ca: CA certificates for mutual TLS: clients must then present a certificate that chains to one of them.

    Raises:
        TLSError: a part is missing, unreadable or not PEM, or the key is not the certificate's.
    """
    cert_pem = read_pem(cert, "TLS certificate")
    key_pem = read_pem(key, "TLS private key", key=True)
    _check_pair(cert_pem, key_pem, cert, "TLS certificate")
    ca_pem = None
    if client_ca is not None:
        ca_pem = read_pem(client_ca, "TLS client CA")
        _check_ca(ca_pem, client_ca, "TLS client CA")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


def channel_credentials(ca: PemSource | None = None, cert: PemSource | None = None,
                        key: PemSource | None = None) -> grpc.ChannelCredentials:
    """Credentials of a TLS channel to the controller (``grpc.secure_channel``).

    Args:
        ca: CA certificates that the server's certificate must chain to; None: the system's roots.
        cert, key: this client's certificate chain and private key, for a server that requires mutual TLS
            (both or neither).

    Raises:
        TLSError: a part is missing, unreadable or not PEM, only one of ``cert`` and ``key`` is given, or the key
            is not the certificate's.
    """
    ca_pem = None
    if ca is not None:
        ca_pem = read_pem(ca, "TLS CA")
        _check_ca(ca_pem, ca, "TLS CA")
    if (cert is None) != (key is None):
        missing = "TLS private key" if key is None else "TLS certificate"
        raise TLSError(missing, NO_VALUE, reason="a client certificate needs its private key and the key its certificate")
    cert_pem = key_pem = None
    if cert is not None and key is not None:
        cert_pem = read_pem(cert, "TLS certificate")
        key_pem = read_pem(key, "TLS private key", key=True)
        _check_pair(cert_pem, key_pem, cert, "TLS certificate")
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def channel_options(server_name: str | None = None) -> list[tuple[str, Any]]:
    """Channel options that check the server's certificate against ``server_name`` instead of the address's host
    (empty for None)."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def server_credentials_from_env(cert: PemSource | None = None, key: PemSource | None = None,
                                client_ca: PemSource | None = None) -> grpc.ServerCredentials | None:
    """:func:`server_credentials` from the given parts, each defaulting to its environment variable
    (:data:`TLS_CERT_ENV`, :data:`TLS_KEY_ENV`, :data:`TLS_CLIENT_CA_ENV`); None when neither a certificate nor a key
    is set (plaintext).

    Raises:
        TLSError: only one of certificate and key is set, or :func:`server_credentials` refuses them.
    """
    cert = cert or os.environ.get(TLS_CERT_ENV) or None
    key = key or os.environ.get(TLS_KEY_ENV) or None
    client_ca = client_ca or os.environ.get(TLS_CLIENT_CA_ENV) or None
    if cert is None and key is None:
        if client_ca is not None:
            raise TLSError("TLS client CA", _shown(client_ca), reason="mutual TLS needs the server's own certificate and key",
                           expected=f"--tls-cert and --tls-key (${TLS_CERT_ENV}, ${TLS_KEY_ENV}) as well")
        return None
    if cert is None or key is None:
        missing, env = ("TLS certificate", TLS_CERT_ENV) if cert is None else ("TLS private key", TLS_KEY_ENV)
        raise TLSError(missing, NO_VALUE, f"a PEM file (--tls-{'cert' if cert is None else 'key'} or ${env})",
                       reason="a TLS server needs both its certificate and its private key")
    return server_credentials(cert, key, client_ca)
