"""TLS and mTLS from settings, with certificates generated for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from tests.support import Stack, bearer, start_stack


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None, *, ca: bool, dir_: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    cert_path, key_path = dir_ / f"{subject}.crt", dir_ / f"{subject}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key, cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca_path, _ = _issue("loyalty-test-ca", None, None, ca=True, dir_=folder)
    _, _, server_cert, server_key = _issue("server", ca_key, ca_cert.subject, ca=False, dir_=folder)
    _, _, client_cert, client_key = _issue("client", ca_key, ca_cert.subject, ca=False, dir_=folder)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


@pytest.fixture(scope="module")
def mtls_stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = f"sqlite:///{tmp_path_factory.mktemp('tls')}/{{service}}.db"
    stack = start_stack(
        url,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
        peer_tls_ca_file=str(pki.ca),
    )
    yield stack
    stack.stop()


def secure(stack: Stack, service: str, pki: Pki, *, with_client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(f"localhost:{stack.services[service].port}", credentials)


def get_account(channel: grpc.Channel) -> points_pb2.GetAccountResponse:
    response: points_pb2.GetAccountResponse = points_pb2_grpc.PointsServiceStub(channel).GetAccount(
        points_pb2.GetAccountRequest(shop_id="shop-a", customer_id="c"), metadata=bearer("reader"), timeout=5
    )
    return response


def test_mtls_client_with_certificate_is_served(mtls_stack: Stack, pki: Pki) -> None:
    assert get_account(secure(mtls_stack, "points", pki, with_client_cert=True)).account.customer_id == "c"


def test_mtls_refuses_a_client_without_certificate(mtls_stack: Stack, pki: Pki) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        get_account(secure(mtls_stack, "points", pki, with_client_cert=False))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(mtls_stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        get_account(grpc.insecure_channel(f"127.0.0.1:{mtls_stack.services['points'].port}"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_calls_use_mtls(mtls_stack: Stack, pki: Pki) -> None:
    stub = segmentation_pb2_grpc.SegmentationServiceStub(secure(mtls_stack, "segmentation", pki, with_client_cert=True))
    profile = stub.GetCustomerProfile(
        segmentation_pb2.GetCustomerProfileRequest(shop_id="shop-a", customer_id="c"),
        metadata=bearer("reader"),
        timeout=10,
    ).profile
    assert profile.customer_id == "c"


def test_tls_only_server_accepts_clients_without_certificates(pki: Pki, tmp_path: Path) -> None:
    stack = start_stack(
        f"sqlite:///{tmp_path}/{{service}}.db",
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        peer_tls_ca_file=str(pki.ca),
    )
    try:
        assert get_account(secure(stack, "points", pki, with_client_cert=False)).account.customer_id == "c"
    finally:
        stack.stop()
