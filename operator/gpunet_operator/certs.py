"""TLS material of one search's controller: a certificate authority of its own and the controller's server
certificate, made with ``cryptography``'s X.509 builder (the chart's ``tls.mode: self-signed``, the default).

The CA signs exactly one certificate and its private key is then dropped: it is never stored, so nobody (the
operator included) can issue another certificate that the search's workers would trust. The Secret
``<search>-tls`` (type ``kubernetes.io/tls``) holds ``ca.crt``, ``tls.crt`` and ``tls.key``; the controller pod
mounts the pair, the worker pods and the operator only ``ca.crt``. A new search gets a new CA; there is no
rotation: the certificates are valid for :data:`VALIDITY` (a search that outlives it must be recreated, or use
cert-manager, which renews).
"""

from __future__ import annotations

import datetime
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Keys of the TLS Secret (the ``kubernetes.io/tls`` type, plus the CA as cert-manager writes it).
CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"
#: How long the CA and the server certificate are valid.
VALIDITY = datetime.timedelta(days=5 * 365)
#: Allowed clock skew between the operator and the pods, in the certificate's notBefore.
SKEW = datetime.timedelta(minutes=5)


def controller_dns_names(search: str, namespace: str) -> list[str]:
    """The names a client may use for the controller's Service: the first is the one the pods and the operator
    check the certificate against (:func:`server_name`)."""
    service = f"{search}-controller"
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}", service]


def server_name(search: str, namespace: str) -> str:
    """The name the controller's certificate is checked against (also when the address is an override)."""
    return controller_dns_names(search, namespace)[0]


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def issue(search: str, namespace: str, now: datetime.datetime | None = None) -> dict[str, bytes]:
    """A new CA and the controller's server certificate (ECDSA P-256, SHA-256), as PEM.

    Returns ``{"ca.crt", "tls.crt", "tls.key"}`` (the key unencrypted PKCS#8, as gRPC and Kubernetes take it).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gpunet-nas"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"search {namespace}/{search} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - SKEW).not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(cert_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = controller_dns_names(search, namespace)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {CA_KEY: ca.public_bytes(pem), CERT_KEY: cert.public_bytes(pem),
            KEY_KEY: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}


def complete(material: Mapping[str, bytes] | None) -> bool:
    """True when ``material`` (a TLS Secret's decoded data) holds the CA and the server pair."""
    return bool(material) and all(material.get(k) for k in (CA_KEY, CERT_KEY, KEY_KEY))
