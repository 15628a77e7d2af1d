"""TLS and mTLS credentials from settings; plaintext when no certificate is configured."""

from __future__ import annotations

from pathlib import Path

import grpc

from services.common.settings import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert_file:
        return None
    pair = (Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def peer_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    if not settings.peer_tls_ca_file:
        return None
    own_key = Path(settings.tls_key_file).read_bytes() if settings.tls_client_ca_file else None
    own_cert = Path(settings.tls_cert_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(settings.peer_tls_ca_file).read_bytes(),
        private_key=own_key,
        certificate_chain=own_cert,
    )
