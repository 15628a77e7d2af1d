"""`make run`: the four services on the embedded SQLite default, with a local dev token.

The token is random per checkout, kept in var/dev-token (its digest in
var/dev-tokens.json, which the services read). Ctrl-C stops everything.
`LOYALTY_RUN_VAR` (another directory than var/) and `LOYALTY_RUN_PORTS`
(`points=50061,metrics=50062,...`; Prometheus endpoints are then off) run a
second copy beside the first: the README walkthrough test does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.common.auth import digest, new_token
from services.common.settings import DEFAULT_PORTS
from tools.supervise import terminate, wait_serving

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("LOYALTY_RUN_VAR") or ROOT / "var")
METRICS_PORT_BASE = 9100


def service_ports() -> dict[str, int]:
    """The gRPC port of each service: the defaults, or those LOYALTY_RUN_PORTS names."""
    given = os.environ.get("LOYALTY_RUN_PORTS", "")
    ports = dict(DEFAULT_PORTS)
    for pair in filter(None, given.split(",")):
        name, _, port = pair.partition("=")
        if name not in ports or not port.isdigit():
            raise SystemExit(f"LOYALTY_RUN_PORTS: {pair!r} is not SERVICE=PORT for one of {', '.join(ports)}")
        ports[name] = int(port)
    return ports


class StopSignals:
    """SIGINT and SIGTERM, noted by a handler that takes no lock.

    `make run` once hung on SIGTERM for good: its handler called
    `threading.Event.set()`, which takes the Event's lock, while the main loop
    sat in `Event.wait` holding it; a handler runs in the main thread between
    two bytecodes, so it waited on itself. Here the handler only appends to a
    list (atomic under the GIL) and the loop polls it.
    """

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for signo in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signo, self._note)

    def _note(self, signo: int, _frame: object) -> None:
        self.received.append(signo)

    def wait(self, *, still_running: Callable[[], bool], interval: float = 0.5) -> bool:
        """Polls until a stop signal arrives (True) or `still_running` says otherwise (False)."""
        while not self.received:
            if not still_running():
                return False
            time.sleep(interval)  # the handler runs inside the sleep; the loop sees its note at most `interval` later
        return True


def dev_token() -> str:
    token_file = VAR / "dev-token"
    if not token_file.exists():
        token_file.write_text(new_token())
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    grants = [{"name": "local-dev", "sha256": digest(token), "shops": ["*"], "scopes": ["admin"]}]
    (VAR / "dev-tokens.json").write_text(json.dumps(grants))
    return token


def offer_demo_seed(token: str, targets: dict[str, str]) -> None:
    """A newcomer sees numbers at once: offer to load the demo shop (LOYALTY_SEED_DEMO=1/0 answers without asking)."""
    answer = os.environ.get("LOYALTY_SEED_DEMO")
    if answer is None:
        if not sys.stdin.isatty():
            return
        answer = input("\nSeed the demo shop 'demo' (1,000 customers, a year of orders)? [y/N] ").strip().lower()
    if answer not in ("1", "y", "yes"):
        print("  later: LOYALTY_TOKEN=$(cat var/dev-token) loyaltyctl --shop demo demo seed")
        return
    env = os.environ | targets | {"LOYALTY_TOKEN": token, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "services.cli.loyaltyctl", "--shop", "demo", "demo", "seed"]
    subprocess.run(command, env=env, check=False)
    print("  then: LOYALTY_TOKEN=$(cat var/dev-token) loyaltyctl --shop demo metrics cohort")


def main() -> int:
    VAR.mkdir(exist_ok=True)
    token = dev_token()
    ports = service_ports()
    moved = ports != DEFAULT_PORTS
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_") and k != "DATABASE_URL"}
    env |= {
        "LOYALTY_ENV": "local",
        "LOYALTY_AUTH_TOKENS_FILE": str(VAR / "dev-tokens.json"),
        "LOYALTY_PEER_TOKEN": token,
        "DATABASE_URL": f"sqlite:///{VAR}/{{service}}.db",
        "PYTHONPATH": str(ROOT),
        **{f"LOYALTY_{name.upper()}_TARGET": f"127.0.0.1:{port}" for name, port in ports.items()},
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for offset, name in enumerate(ports, start=1):
        log = (VAR / f"{name}.log").open("ab")
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env
            | {
                "LOYALTY_GRPC_PORT": str(ports[name]),
                "LOYALTY_METRICS_PORT": "0" if moved else str(METRICS_PORT_BASE + offset),
            },
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stop = StopSignals()
    stop.install()
    try:
        for name, process in processes.items():
            wait_serving(process, f"127.0.0.1:{ports[name]}", timeout=60, label=name)
        print("\nloyalty suite is running (embedded SQLite under var/, logs in var/*.log)\n")
        for offset, (name, port) in enumerate(ports.items(), start=1):
            scrape = "" if moved else f"   metrics http://127.0.0.1:{METRICS_PORT_BASE + offset}/metrics"
            print(f"  {name:<15} 127.0.0.1:{port}{scrape}")
        print(f"\n  dev token: {token}   (also in var/dev-token)")
        points = f"127.0.0.1:{ports['points']}"
        print(f"  try: grpcurl -plaintext {points} list")
        print(f'       grpcurl -plaintext -H "authorization: Bearer $(cat {VAR}/dev-token)" \\')
        print('         -d \'{"shop_id":"demo","customer_id":"c1"}\' \\')
        print(f"         {points} loyalty.points.v1.PointsService/GetAccount")
        offer_demo_seed(token, {k: v for k, v in env.items() if k.endswith("_TARGET")})
        print("\nCtrl-C stops everything.")
        if stop.wait(still_running=lambda: all(p.poll() is None for p in processes.values())):
            return 0
        dead = [n for n, p in processes.items() if p.poll() is not None]
        print(f"stopped unexpectedly: {', '.join(dead)} (see var/<name>.log)", file=sys.stderr)
        return 1
    finally:
        codes = terminate(list(processes.values()), grace=15)
        print(f"stopped ({', '.join(f'{n}={c}' for n, c in zip(processes, codes, strict=True))})")


if __name__ == "__main__":
    raise SystemExit(main())
