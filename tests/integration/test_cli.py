"""loyaltyctl against the in-process stack: output, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2 as sg
from loyalty.segmentation.v1 import segmentation_pb2_grpc
from typer.testing import CliRunner

from services.cli import loyaltyctl
from services.cli.demo import demo_shop
from services.cli.loyaltyctl import app
from tests.integration.test_metrics_rpc import order
from tests.support import TOKENS, Stack, bearer, free_port


@pytest.fixture
def run(stack: Stack, uid: str) -> CliRunnerCall:
    return CliRunnerCall(stack, f"cli-{uid}")


ADMIN = bearer("admin")


class CliRunnerCall:
    def __init__(self, stack: Stack, shop: str) -> None:
        self.shop = shop
        self.env = {f"LOYALTY_{name.upper()}_TARGET": service.address for name, service in stack.services.items()}
        self.env["LOYALTY_TOKEN"] = TOKENS["admin"][0]
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        result = self.runner.invoke(app, ["--shop", self.shop, *args], env={**self.env, **(env or {})})
        return result.exit_code, without_service_logs(result.stdout), without_service_logs(result.stderr)


SERVICE_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def without_service_logs(text: str) -> str:
    """The in-process services log to the same stdout the runner captures; keep only the CLI's own lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not SERVICE_LOG_LINE.match(line))


def test_grant_then_account_as_table_and_json(run: CliRunnerCall) -> None:
    code, out, _ = run("points", "grant", "c1", "120", "--reason", "welcome")
    assert code == 0
    assert "+120" in out
    code, out, _ = run("points", "account", "c1")
    assert code == 0
    assert "120" in out
    assert "points" in out
    code, out, _ = run("--json", "points", "account", "c1")
    assert code == 0
    account = json.loads(out)
    assert account["points_balance"] == "120"
    assert (account["growth_balance"], account["stored_principal"]) == ("0", "0")  # zeros are printed, not dropped
    code, out, _ = run("points", "grant", "c1", "-50", "--reason", "correction")  # a negative number, not an option
    assert code == 0
    assert json.loads(run("--json", "points", "account", "c1")[1])["points_balance"] == "70"


def test_same_request_id_applies_once(run: CliRunnerCall) -> None:
    for _ in range(2):
        assert run("points", "grant", "c1", "50", "--request-id", "once-only")[0] == 0
    assert json.loads(run("--json", "points", "account", "c1")[1])["points_balance"] == "50"


def test_reconcile_reports_a_balanced_ledger(run: CliRunnerCall) -> None:
    run("points", "grant", "c1", "10")
    code, out, _ = run("points", "reconcile")
    assert (code, "balanced" in out) == (0, True)


def test_repurchase_and_cohort_from_recorded_orders(stack: Stack, run: CliRunnerCall) -> None:
    now = datetime.now(UTC)
    orders = [
        order(f"o{i}", c, now - timedelta(days=d), 5_000) for i, (c, d) in enumerate([("a", 3), ("a", 2), ("b", 2)])
    ]
    metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics")).RecordOrders(
        metrics_pb2.RecordOrdersRequest(shop_id=run.shop, request_id="r1", orders=orders), metadata=bearer("admin")
    )
    day = (now - timedelta(days=10)).date().isoformat()
    code, out, _ = run("--json", "metrics", "repurchase", "--start", day, "--end", now.date().isoformat())
    assert code == 0
    assert (json.loads(out)["numerator"], json.loads(out)["denominator"]) == ("1", "2")
    code, out, _ = run("metrics", "cohort")
    assert code == 0
    assert "size" in out


def test_segments_eval_and_members(stack: Stack, run: CliRunnerCall) -> None:
    now = datetime.now(UTC)
    metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics")).RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id=run.shop, request_id="r1", orders=[order("o1", "z1", now - timedelta(days=1), 900)]
        ),
        metadata=bearer("admin"),
    )
    segment = sg.Segment(segment_id="buyers", name="buyers", rule="order_count >= 1")
    segmentation_pb2_grpc.SegmentationServiceStub(stack.channel("segmentation")).UpsertSegment(
        sg.UpsertSegmentRequest(shop_id=run.shop, request_id="s1", segment=segment), metadata=bearer("admin")
    )
    code, out, _ = run("segments", "eval")
    assert (code, "buyers" in out) == (0, True)
    code, out, _ = run("--json", "segments", "members", "buyers")
    listed = json.loads(out)
    assert (code, listed["customer_ids"]) == (0, ["z1"])
    assert {"value_class", "churn_risk", "churn_reason", "rfm"} <= set(listed["members"][0])
    paid_day = (now - timedelta(days=1)).astimezone(ZoneInfo("Asia/Shanghai")).date()  # the shop's default zone
    last = listed["members"][0]["last_order_day"]
    assert date(last["year"], last["month"], last["day"]) == paid_day
    code, out, _ = run("segments", "members", "buyers")
    assert (code, "z1" in out, "value" in out, "churn" in out) == (0, True, True, True)  # headers wrap at 80 columns
    code, _out, err = run("segments", "members", "nosuch")
    assert (code, err.startswith("error: NOT_FOUND: segment 'nosuch' does not exist")) == (1, True)


def test_cycle_preview_lists_dates(run: CliRunnerCall) -> None:
    code, out, _ = run(
        "--json",
        "cycle",
        "preview",
        "--start",
        "2028-01-01",
        "--cadence",
        "monthly",
        "--month-days",
        "31",
        "--count",
        "3",
    )
    assert code == 0
    assert [d["month"] for d in json.loads(out)["dates"]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("metrics", "repurchase", "--start", "2026-01-01", "--end", "2026-02-01", "--by", "visit"), 2, "--by"),
        (("cycle", "preview", "--start", "yesterday"), 2, "--start"),
        (("points", "grant", "c1", "zero"), 2, "points"),
        (
            (
                "points",
                "nosuchcommand",
            ),
            2,
            "No such command",
        ),
        (("points", "account", "bad id!"), 1, "error: INVALID_ARGUMENT"),
        (("cycle", "subscription", "missing"), 1, "error: NOT_FOUND"),
    ],
)
def test_user_mistakes_exit_non_zero_with_one_clear_line(
    run: CliRunnerCall, args: tuple[str, ...], code: int, text: str
) -> None:
    exit_code, out, err = run(*args)
    assert exit_code == code
    assert text in out + err
    assert "Traceback" not in out + err


def test_bad_token_and_unreachable_service_are_one_line_errors(run: CliRunnerCall) -> None:
    code, _out, err = run("points", "account", "c1", env={"LOYALTY_TOKEN": "not-a-token"})
    assert (code, err.strip().count("\n")) == (1, 0)
    assert "error: UNAUTHENTICATED" in err
    assert "(the token came from LOYALTY_TOKEN (or --token))" in err
    target = f"127.0.0.1:{free_port()}"
    code, _out, err = run("points", "account", "c1", env={"LOYALTY_POINTS_TARGET": target})
    assert (code, err.strip()) == (1, f"error: UNAVAILABLE: cannot reach the points service at {target}")


def test_the_token_comes_from_the_environment_then_a_file_then_make_runs_dev_token(
    run: CliRunnerCall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["admin"][0] + "\n")
    assert run("points", "account", "c1", env={"LOYALTY_TOKEN": "", "LOYALTY_TOKEN_FILE": str(token_file)})[0] == 0
    missing = tmp_path / "missing"
    code, _out, err = run("points", "account", "c1", env={"LOYALTY_TOKEN": "", "LOYALTY_TOKEN_FILE": str(missing)})
    assert (code, f"LOYALTY_TOKEN_FILE={missing} (unreadable)" in err) == (1, True)
    dev_token = tmp_path / "dev-token"  # what `make run` writes in the checkout
    dev_token.write_text("a-token-this-stack-does-not-know")
    monkeypatch.setattr(loyaltyctl, "CHECKOUT_DEV_TOKEN", dev_token)
    code, _out, err = run("points", "account", "c1", env={"LOYALTY_TOKEN": ""})
    assert (code, f"(the token came from {dev_token})" in err) == (1, True)


def test_demo_seed_loads_a_shop_through_the_rpcs_and_is_safe_to_rerun(stack: Stack, run: CliRunnerCall) -> None:
    args = ("--json", "demo", "seed", "--customers", "60", "--seed", "3", "--today", "2026-11-20")
    code, out, err = run(*args)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["orders"] > 60
    metrics = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    overview = metrics.GetRepurchaseRate(
        metrics_pb2.GetRepurchaseRateRequest(
            shop_id=run.shop,
            period_start=common_pb2.Date(year=2025, month=11, day=20),
            period_end=common_pb2.Date(year=2026, month=11, day=20),
            basis=metrics_pb2.REPURCHASE_BASIS_CUSTOMER,
        ),
        metadata=bearer("admin"),
    ).rate
    data = demo_shop(60, 3, date(2026, 11, 20))
    fully_refunded = {
        r.order_id
        for r in data.refunds
        if r.amount_minor == next(o for o in data.orders if o.order_id == r.order_id).amount_minor
    }
    kept = [o for o in data.orders if o.order_id not in fully_refunded]
    orders_per_customer = Counter(o.customer_id for o in kept)
    assert overview.denominator == len(orders_per_customer)  # customers with an order that was not refunded in full
    assert overview.numerator == sum(1 for n in orders_per_customer.values() if n >= 2)
    assert 0 < overview.numerator < overview.denominator
    assert run(*args)[0] == 0  # a rerun changes nothing (every call is idempotent)
    again = metrics.GetRepurchaseRate(
        metrics_pb2.GetRepurchaseRateRequest(
            shop_id=run.shop,
            period_start=common_pb2.Date(year=2025, month=11, day=20),
            period_end=common_pb2.Date(year=2026, month=11, day=20),
            basis=metrics_pb2.REPURCHASE_BASIS_CUSTOMER,
        ),
        metadata=bearer("admin"),
    ).rate
    assert again == overview
    code, out, _ = run("--json", "segments", "members", "repeat_buyers", "--limit", "1000")
    assert len(json.loads(out)["customer_ids"]) == overview.numerator
    code, out, _ = run("points", "reconcile")
    assert code == 0


# Every command with good arguments, and a bad variant of them (refused by the CLI or by the service).
COMMANDS: list[tuple[list[str], list[str]]] = [
    (["points", "account", "c1"], ["points", "account", "not an id"]),
    (["points", "grant", "c1", "10"], ["points", "grant", "c1", "ten"]),
    (["points", "reconcile"], ["points", "reconcile", "--bogus"]),
    (
        ["metrics", "repurchase", "--start", "2026-01-01", "--end", "2026-02-01"],
        ["metrics", "repurchase", "--start", "2026-13-01", "--end", "2026-02-01"],
    ),
    (["metrics", "cohort"], ["metrics", "cohort", "--grain", "decade"]),
    (["segments", "eval"], ["segments", "eval", "extra"]),
    (["segments", "members", "buyers"], ["segments", "members", "buyers", "--version", "-1"]),
    (
        ["cycle", "preview", "--start", "2026-12-01"],
        ["cycle", "preview", "--start", "2026-12-01", "--cadence", "hourly"],
    ),
    (["cycle", "subscription", "s1"], ["cycle", "subscription", "not an id"]),
    (["cycle", "subscriptions", "--customer", "c1"], ["cycle", "subscriptions", "--customer", "c1", "--state", "x"]),
    (["demo", "seed", "--customers", "5"], ["demo", "seed", "--customers", "0"]),
    (["report", "--months", "2"], ["report", "--months", "1"]),
    (["rpc", "loyalty.points.v1.PointsService/GetAccount", "--data", '{"customer_id": "c1"}'], ["rpc", "frobnicate"]),
    (["shop", "set-zone", "America/New_York"], ["shop", "set-zone", "Mars/Olympus"]),
    (["shop", "show"], ["shop", "show", "extra"]),
]


@pytest.mark.parametrize(("good", "bad"), COMMANDS, ids=[" ".join(good[:2]) for good, _ in COMMANDS])
def test_every_command_fails_in_one_line_with_a_service_down_a_bad_token_or_a_bad_argument(
    run: CliRunnerCall, tmp_path: Path, good: list[str], bad: list[str]
) -> None:
    down = {name: f"127.0.0.1:{free_port()}" for name in ("points", "metrics", "segmentation", "cycle_delivery")}
    cases = {
        "service down": (good, {f"LOYALTY_{name.upper()}_TARGET": target for name, target in down.items()}),
        "bad token": (good, {"LOYALTY_TOKEN": "not-a-token"}),
        "bad argument": (bad, {}),
    }
    for case, (args, env) in cases.items():
        if args[0] == "report":
            args = [*args, "--out", str(tmp_path / "report")]
        if args[0] == "cycle" and args[1] == "preview" and case == "bad token":
            continue  # PreviewSchedule is a pure calculation any token may ask for
        code, _out, err = run(*args, env=env)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0, (case, args)
        assert len(lines) == 1, (case, args, err)
        assert "Traceback" not in err, (case, args)


def test_cycle_subscriptions_lists_a_buyers_subscriptions_by_state(stack: Stack, run: CliRunnerCall) -> None:
    cycle = cycle_delivery_pb2_grpc.CycleDeliveryServiceStub(stack.channel("cycle_delivery"))
    plan = cd.Plan(
        plan_id="milk",
        sku="milk-1l",
        name="milk",
        rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
        delivery_count=3,
        delivery_modes=[cd.DELIVERY_MODE_SAME_CITY],
        price_per_delivery=common_pb2.Money(amount_minor=1_000, currency="CNY"),
        time_zone="America/New_York",
    )
    cycle.UpsertPlan(cd.UpsertPlanRequest(shop_id=run.shop, request_id="plan", plan=plan), metadata=ADMIN)
    start = datetime.now(UTC).date() + timedelta(days=10)
    for n in range(3):
        order = common_pb2.Order(
            order_id=f"o{n}", customer_id="buyer", paid=common_pb2.Money(amount_minor=3_000, currency="CNY")
        )
        order.paid_at.GetCurrentTime()
        cycle.CreateSubscription(
            cd.CreateSubscriptionRequest(
                shop_id=run.shop,
                request_id=f"sub{n}",
                order=order,
                plan_id="milk",
                quantity=1,
                address="上海市徐汇区",
                delivery_mode=cd.DELIVERY_MODE_SAME_CITY,
                start_date=common_pb2.Date(year=start.year, month=start.month, day=start.day),
            ),
            metadata=ADMIN,
        )
    cycle.PauseSubscription(
        cd.PauseSubscriptionRequest(shop_id=run.shop, request_id="pause", subscription_id="o1"), metadata=ADMIN
    )
    code, out, _ = run("--json", "cycle", "subscriptions", "--customer", "buyer", "--limit", "2")
    assert code == 0
    assert [s["subscription_id"] for s in json.loads(out)["subscriptions"]] == ["o0", "o1"]
    code, out, _ = run("cycle", "subscriptions", "--customer", "buyer", "--state", "paused")
    assert (code, "o1" in out, "o0" in out, start.isoformat() in out) == (0, True, False, True)
    code, _out, err = run("cycle", "subscriptions")
    assert (code, err.strip()) == (1, "error: give exactly one of --customer and --due")
    code, out, _ = run("cycle", "subscription", "o0")
    assert (code, out.count("America/New_York")) == (0, 3)  # each change deadline in the plan's own zone, named


def test_rpc_lists_describes_and_calls_any_method_through_reflection(run: CliRunnerCall) -> None:
    code, out, _ = run("rpc", "list")
    assert code == 0
    assert {"loyalty.points.v1.PointsService", "loyalty.metrics.v1.MetricsService"} <= {
        line.split()[0] for line in out.splitlines() if line.strip()
    }
    code, out, _ = run("rpc", "describe", "loyalty.points.v1.PointsService/GetAccount")
    assert code == 0
    assert "GetAccount(loyalty.points.v1.GetAccountRequest) returns (loyalty.points.v1.GetAccountResponse)" in out
    assert "string customer_id = 2;" in out
    assert run("points", "grant", "c7", "30")[0] == 0
    data = json.dumps({"shop_id": run.shop, "customer_id": "c7"})
    code, out, _ = run("rpc", "loyalty.points.v1.PointsService/GetAccount", "--data", data)
    assert code == 0
    account = json.loads(out)["account"]
    assert (account["points_balance"], account["rebate_balance"]) == ("30", "0")  # proto3 JSON, zeros kept
    cases = [
        (["rpc", "loyalty.points.v1.NoSuch/GetAccount"], "no service 'loyalty.points.v1.NoSuch'"),
        (["rpc", "loyalty.points.v1.PointsService/NoSuch"], "has no method 'NoSuch'"),
        (["rpc", "loyalty.points.v1.PointsService/GetAccount", "--data", "{nope"], "--data is not a valid request"),
        (["rpc", "loyalty.points.v1.PointsService/GetAccount", "--data", '{"customer_id": "c 7"}'], "INVALID_ARGUMENT"),
    ]
    for args, message in cases:
        code, _out, err = run(*args)
        assert (code, message in err, err.count("\n")) == (1, True, 1), (args, err)


def test_shop_set_zone_moves_metrics_and_segmentation_and_show_names_every_zone(
    stack: Stack, run: CliRunnerCall
) -> None:
    metrics = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    paid = datetime(2025, 3, 11, 3, 30, tzinfo=UTC)  # 23:30 on 10 March in New York, 11:30 on 11 March in Shanghai
    metrics.RecordOrders(
        metrics_pb2.RecordOrdersRequest(shop_id=run.shop, request_id="o", orders=[order("o1", "c1", paid, 100)]),
        metadata=ADMIN,
    )
    code, out, _ = run("--json", "shop", "show")
    shown = json.loads(out)
    assert code == 0
    assert (shown["metrics"]["settings"]["time_zone"], shown["metrics"]["default_zone"]) == ("Asia/Shanghai", True)
    code, out, err = run("shop", "set-zone", "America/New_York")
    assert code == 0, err
    assert "1 orders and 0 answers re-dated" in out
    code, out, _ = run("--json", "shop", "show")
    shown = json.loads(out)
    assert shown["metrics"]["settings"] == {"time_zone": "America/New_York", "currency": "CNY"}
    assert shown["segmentation"]["settings"]["time_zone"] == "America/New_York"
    assert shown["metrics"]["default_zone"] is False
    assert "time_zone" in shown["points_program"]
