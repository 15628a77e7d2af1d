"""`python -m services.common.healthcheck`: exit 0 when the local service reports SERVING.

Used by the compose healthcheck, so it reads the same LOYALTY_* settings
(port, and TLS when the service serves TLS).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import Settings
from services.common.tls import peer_credentials


def main() -> int:
    settings = Settings()
    port = settings.grpc_port or 50051
    credentials = peer_credentials(settings) if settings.tls_cert_file else None
    if settings.tls_cert_file and credentials is None:
        print("TLS is on: set LOYALTY_PEER_TLS_CA_FILE so the check can verify the server", file=sys.stderr)
        return 1
    target = f"localhost:{port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())
