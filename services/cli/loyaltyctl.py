"""loyaltyctl: the operator's command line for the four services, through their generated stubs.

Same settings as the services (LOYALTY_POINTS_TARGET, LOYALTY_METRICS_TARGET,
...); the token from LOYALTY_TOKEN (or --token), LOYALTY_TOKEN_FILE, `make run`'s
var/dev-token, or the compose dev token (`resolve_token`), the shop from
LOYALTY_SHOP (or --shop). Tables by default, `--json` for scripts. A failed
call prints one line (`error: NOT_FOUND: ...`) and exits 1; bad arguments exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click.exceptions import ClickException  # typer vendors click; its usage errors are these
from typer.core import TyperGroup

from services.cli import reflection
from services.cli import report as report_module
from services.cli import seed as seed_module
from services.common.channels import peer_channel
from services.common.settings import DEV_TOKEN

T = TypeVar("T")
DEFAULT_TARGETS = {
    "points": "127.0.0.1:50051",
    "metrics": "127.0.0.1:50052",
    "segmentation": "127.0.0.1:50053",
    "cycle_delivery": "127.0.0.1:50054",
}
STUBS: dict[str, Any] = {
    "points": points_pb2_grpc.PointsServiceStub,
    "metrics": metrics_pb2_grpc.MetricsServiceStub,
    "segmentation": segmentation_pb2_grpc.SegmentationServiceStub,
    "cycle_delivery": cycle_delivery_pb2_grpc.CycleDeliveryServiceStub,
}
CALL_TIMEOUT_SECONDS = 30.0


@dataclass
class Cli:
    shop: str
    token: str
    as_json: bool
    token_source: str = "LOYALTY_TOKEN (or --token)"  # noqa: S105 - where the token came from, not a token
    targets: dict[str, str] = field(default_factory=dict)
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))

    def stub(self, service: str) -> Any:
        return STUBS[service](peer_channel(self.targets[service], self.token))

    def all_stubs(self) -> seed_module.Stubs:
        return seed_module.Stubs(
            points=self.stub("points"),
            metrics=self.stub("metrics"),
            segmentation=self.stub("segmentation"),
            cycle_delivery=self.stub("cycle_delivery"),
        )

    def show(self, message: Message, table: Callable[[], Table]) -> None:
        if self.as_json:
            self.out.print_json(json.dumps(reflection.json_fields(message)))  # zeros kept: scripts need no defaults
        else:
            self.out.print(table())


class OneLineErrors(TyperGroup):
    """Bad arguments and usage errors as one line on stderr (`error: ...`), exit code 2: no usage box."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            print(f"error: {exc.format_message()} (see --help)", file=sys.stderr)
            code = exc.exit_code
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Operate the loyalty suite: points, metrics, segments, cycle delivery.",
    no_args_is_help=True,
)
points_app = typer.Typer(help="Points ledger and member accounts.", no_args_is_help=True)
metrics_app = typer.Typer(help="Repurchase, cohort and other numbers.", no_args_is_help=True)
segments_app = typer.Typer(help="Segments: evaluation and members.", no_args_is_help=True)
cycle_app = typer.Typer(help="Cycle delivery (周期购) schedules and subscriptions.", no_args_is_help=True)
app.add_typer(points_app, name="points")
app.add_typer(metrics_app, name="metrics")
app.add_typer(segments_app, name="segments")
demo_app = typer.Typer(help="A realistic demo shop for trying the suite (and loading it).", no_args_is_help=True)
app.add_typer(cycle_app, name="cycle")
shop_app = typer.Typer(help="The shop's settings: the zone its days are judged in.", no_args_is_help=True)
app.add_typer(shop_app, name="shop")
app.add_typer(demo_app, name="demo")


@app.callback()
def configure(
    ctx: typer.Context,
    shop: Annotated[str, typer.Option(envvar="LOYALTY_SHOP", help="Shop id.")] = "demo",
    token: Annotated[str, typer.Option(envvar="LOYALTY_TOKEN", help="Bearer token.", show_default=False)] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    targets = {
        name: os.environ.get(f"LOYALTY_{name.upper()}_TARGET", target) for name, target in DEFAULT_TARGETS.items()
    }
    token, source = resolve_token(token)
    ctx.obj = Cli(shop=shop, token=token, token_source=source, as_json=as_json, targets=targets)


CHECKOUT_DEV_TOKEN = Path(__file__).resolve().parents[2] / "var" / "dev-token"  # what `make run` writes


def resolve_token(given: str) -> tuple[str, str]:
    """(token, where it came from): --token / LOYALTY_TOKEN, LOYALTY_TOKEN_FILE, `make run`'s var/dev-token,
    then the compose stack's documented dev token."""
    if given:
        return given, "LOYALTY_TOKEN (or --token)"
    named = os.environ.get("LOYALTY_TOKEN_FILE")
    for path, source in ((named, f"LOYALTY_TOKEN_FILE={named}"), (str(CHECKOUT_DEV_TOKEN), str(CHECKOUT_DEV_TOKEN))):
        if path:
            try:
                return Path(path).read_text().strip(), source
            except OSError:
                if path == named:  # a file asked for by name must exist
                    return "", f"LOYALTY_TOKEN_FILE={named} (unreadable)"
    return DEV_TOKEN, "the compose stack's documented dev token (set LOYALTY_TOKEN or run `make run`)"


def cli(ctx: typer.Context) -> Cli:
    obj: Cli = ctx.obj
    return obj


@contextmanager
def calling(state: Cli, service: str) -> Iterator[None]:
    """Turns a failed call into one clear line and exit code 1 (no traceback for a user's mistake)."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = code.name if isinstance(code, grpc.StatusCode) else "ERROR"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            fail(state, f"{name}: cannot reach {unreachable(state, service, exc)}")
        if code is grpc.StatusCode.UNAUTHENTICATED:
            fail(state, f"{name}: {exc.details()} (the token came from {state.token_source})")
        fail(state, f"{name}: {exc.details()}")


def unreachable(state: Cli, service: str, exc: grpc.RpcError) -> str:
    """Which service a failed call could not reach; for a command that calls several, the one the error names."""
    if service in state.targets:
        return f"the {service} service at {state.targets[service]}"
    debug = getattr(exc, "debug_error_string", lambda: "")()
    named = [f"the {name} service at {target}" for name, target in state.targets.items() if target in str(debug)]
    every = ", ".join(f"{name} {target}" for name, target in state.targets.items())
    return named[0] if len(named) == 1 else f"one of the services ({every}); is the suite running?"


def fail(state: Cli, message: str) -> NoReturn:
    """One unwrapped line on stderr and exit code 1: what went wrong, never a traceback."""
    state.err.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


def parse_iso_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date like 2026-03-01", param_hint=option) from None


def parse_day(value: str, option: str) -> common_pb2.Date:
    day = parse_iso_day(value, option)
    return common_pb2.Date(year=day.year, month=day.month, day=day.day)


def day_text(value: common_pb2.Date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def local_time(stamp: Timestamp, zone: str) -> str:
    """An instant in the shop's zone, the zone named (operators read shop time, not UTC); UTC when unknown."""
    zone = zone or "UTC"
    return f"{stamp.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} {zone}"


def plan_zone(state: Cli, plan_id: str) -> str:
    """The zone a plan's cut-offs are in ("" when the plan leaves it to the service default, or is gone)."""
    try:
        plan = state.stub("cycle_delivery").GetPlan(
            cd.GetPlanRequest(shop_id=state.shop, plan_id=plan_id), timeout=CALL_TIMEOUT_SECONDS
        )
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return ""
        raise
    return str(plan.plan.time_zone)


def shop_today(state: Cli) -> date:
    """Today in the zone metrics judges the shop's days in (the report's months are metrics' months)."""
    zone = (
        state.stub("metrics")
        .GetShopSettings(metrics_pb2.GetShopSettingsRequest(shop_id=state.shop), timeout=CALL_TIMEOUT_SECONDS)
        .settings.time_zone
    )
    return datetime.now(UTC).astimezone(ZoneInfo(zone)).date()


def new_request_id() -> str:
    return f"cli-{uuid.uuid4().hex[:16]}"


# ---------------------------------------------------------------- points


@points_app.command("account")
def points_account(ctx: typer.Context, customer: str) -> None:
    """A member's balances, tier and the points expiring soonest."""
    state = cli(ctx)
    with calling(state, "points"):
        account = (
            state.stub("points")
            .GetAccount(
                points_pb2.GetAccountRequest(shop_id=state.shop, customer_id=customer), timeout=CALL_TIMEOUT_SECONDS
            )
            .account
        )
        zone = (
            state.stub("points")
            .GetProgram(points_pb2.GetProgramRequest(shop_id=state.shop), timeout=CALL_TIMEOUT_SECONDS)
            .program.time_zone
        )

    def table() -> Table:
        t = Table(title=f"Member {customer} · {state.shop}")
        t.add_column("balance")
        t.add_column("value", justify="right")
        t.add_row("points 积分", str(account.points_balance))
        t.add_row("pending points", str(account.pending_points))
        t.add_row("growth 成长值", str(account.growth_balance))
        t.add_row("stored value 储值 (principal + bonus)", f"{account.stored_principal} + {account.stored_bonus}")
        t.add_row("rebate credit 消费金", str(account.rebate_balance))
        tier = account.tier
        t.add_row(
            "tier 等级",
            f"{tier.name or tier.code or '-'}" + (f" ({tier.to_next} to {tier.next_code})" if tier.next_code else ""),
        )
        if account.HasField("expiring_soonest"):
            expiry = account.expiring_soonest
            t.add_row("expiring soonest", f"{expiry.points} at {local_time(expiry.expires_at, zone)}")
        return t

    state.show(account, table)


@points_app.command(
    "grant", context_settings={"ignore_unknown_options": True}
)  # `grant c1 -50`: a number, not an option
def points_grant(
    ctx: typer.Context,
    customer: str,
    points: Annotated[int, typer.Argument(help="Points to add (negative to take away).")],
    reason: Annotated[str, typer.Option(help="Why, shown to operators.")] = "loyaltyctl",
    request_id: Annotated[str, typer.Option(help="Idempotency key; a retry with the same one applies once.")] = "",
) -> None:
    """Adjust a member's points (compensation, correction)."""
    state = cli(ctx)
    if points == 0:
        raise typer.BadParameter("must not be zero", param_hint="POINTS")
    with calling(state, "points"):
        response = state.stub("points").AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id=state.shop,
                request_id=request_id or new_request_id(),
                customer_id=customer,
                asset=points_pb2.ASSET_POINTS,
                delta=points,
                reason=reason,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def table() -> Table:
        t = Table(title="Adjusted")
        for column in ("entry", "delta", "balance after", "request id"):
            t.add_column(column)
        e = response.entry
        t.add_row(str(e.entry_id), f"{e.delta:+d}", str(e.balance_after), e.request_id)
        return t

    state.show(response, table)


@points_app.command("reconcile")
def points_reconcile(ctx: typer.Context) -> None:
    """Prove the shop's ledger; exits 1 when a check fails."""
    state = cli(ctx)
    with (
        calling(state, "points"),
        Progress(
            SpinnerColumn(),
            TextColumn("reconciling {task.description}"),
            TimeElapsedColumn(),
            console=state.err,
            transient=True,
        ) as progress,
    ):
        progress.add_task(state.shop, total=None)
        result = state.stub("points").ReconcileLedger(
            points_pb2.ReconcileLedgerRequest(shop_id=state.shop), timeout=600
        )

    def table() -> Table:
        t = Table(title=f"Ledger of {state.shop}: {'balanced' if result.balanced else 'MISMATCHES'}")
        for column in ("check", "holder", "asset", "expected", "actual"):
            t.add_column(column)
        for m in result.mismatches:
            t.add_row(m.check, m.holder, points_pb2.Asset.Name(m.asset), str(m.expected), str(m.actual))
        t.caption = f"{result.balances_checked} balances, {result.entries_checked} entries checked"
        return t

    state.show(result, table)
    if not result.balanced:
        raise typer.Exit(1)


# ---------------------------------------------------------------- shop

DAY_JUDGES = ("metrics", "segmentation")  # the services that keep a shop zone (points' program and plans keep theirs)


@shop_app.command("set-zone")
def shop_set_zone(
    ctx: typer.Context,
    zone: Annotated[str, typer.Argument(help="IANA time zone, e.g. Asia/Shanghai or America/New_York.")],
    request_id: Annotated[str, typer.Option(help="Idempotency key; a retry with the same one applies once.")] = "",
) -> None:
    """Judge the shop's days in ZONE: metrics first (re-dates its orders), then segmentation (re-evaluates)."""
    state = cli(ctx)
    request_id = request_id or new_request_id()
    settings = common_pb2.ShopSettings(time_zone=zone)
    with calling(state, "metrics"):
        on_metrics = state.stub("metrics").SetShopSettings(
            metrics_pb2.SetShopSettingsRequest(shop_id=state.shop, request_id=request_id, settings=settings),
            timeout=600,
        )
    with calling(state, "segmentation"):
        on_segmentation = state.stub("segmentation").SetShopSettings(
            segmentation_pb2.SetShopSettingsRequest(shop_id=state.shop, request_id=request_id, settings=settings),
            timeout=600,
        )
    if state.as_json:
        answers = {"metrics": on_metrics, "segmentation": on_segmentation}
        state.out.print_json(json.dumps({name: reflection.json_fields(a) for name, a in answers.items()}))
        return
    t = Table(title=f"{state.shop} judges days in {zone}")
    for column in ("service", "zone", "changed", "what moved"):
        t.add_column(column)
    t.add_row(
        "metrics",
        on_metrics.settings.time_zone,
        "yes" if on_metrics.zone_changed else "no",
        f"{on_metrics.orders_redated} orders and {on_metrics.feedback_redated} answers re-dated; "
        f"{on_metrics.summaries_queued} summaries re-settling",
    )
    t.add_row(
        "segmentation",
        on_segmentation.settings.time_zone,
        "yes" if on_segmentation.zone_changed else "no",
        f"re-evaluated as version {on_segmentation.reevaluated_version}"
        if on_segmentation.reevaluated_version
        else "nothing evaluated yet",
    )
    t.caption = "points' program and each cycle-delivery plan keep their own zone"
    state.out.print(t)


@shop_app.command("show")
def shop_show(ctx: typer.Context) -> None:
    """The zone each service judges the shop's days in, and its currency."""
    state = cli(ctx)
    with calling(state, "metrics"):
        on_metrics = state.stub("metrics").GetShopSettings(
            metrics_pb2.GetShopSettingsRequest(shop_id=state.shop), timeout=CALL_TIMEOUT_SECONDS
        )
    with calling(state, "segmentation"):
        on_segmentation = state.stub("segmentation").GetShopSettings(
            segmentation_pb2.GetShopSettingsRequest(shop_id=state.shop), timeout=CALL_TIMEOUT_SECONDS
        )
    with calling(state, "points"):
        program = (
            state.stub("points")
            .GetProgram(points_pb2.GetProgramRequest(shop_id=state.shop), timeout=CALL_TIMEOUT_SECONDS)
            .program
        )
    if state.as_json:
        answers = {"metrics": on_metrics, "segmentation": on_segmentation}
        shown = {name: reflection.json_fields(a) for name, a in answers.items()}
        shown["points_program"] = {"time_zone": program.time_zone}
        state.out.print_json(json.dumps(shown))
        return
    t = Table(title=f"Settings of {state.shop}")
    for column in ("service", "zone", "currency", "source"):
        t.add_column(column)
    for name, answer in (("metrics", on_metrics), ("segmentation", on_segmentation)):
        source = "service default" if answer.default_zone else "shop setting"
        t.add_row(name, answer.settings.time_zone, answer.settings.currency or "-", source)
    t.add_row("points program", program.time_zone, program.currency or "-", "the program's own")
    t.caption = "each cycle-delivery plan names its own zone (cycle subscription shows it)"
    state.out.print(t)


# ---------------------------------------------------------------- metrics


@metrics_app.command("repurchase")
def metrics_repurchase(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day, e.g. 2026-01-01.")],
    end: Annotated[str, typer.Option(help="Last day, inclusive.")],
    by: Annotated[str, typer.Option(help="customer or order.")] = "customer",
    history: Annotated[bool, typer.Option(help="Count purchases before the period.")] = False,
) -> None:
    """Repurchase rate (复购率) of a period."""
    state = cli(ctx)
    bases = {"customer": metrics_pb2.REPURCHASE_BASIS_CUSTOMER, "order": metrics_pb2.REPURCHASE_BASIS_ORDER}
    if by not in bases:
        raise typer.BadParameter("must be 'customer' or 'order'", param_hint="--by")
    request = metrics_pb2.GetRepurchaseRateRequest(
        shop_id=state.shop,
        period_start=parse_day(start, "--start"),
        period_end=parse_day(end, "--end"),
        basis=bases[by],
        count_history=history,
    )
    with calling(state, "metrics"):
        rate = state.stub("metrics").GetRepurchaseRate(request, timeout=CALL_TIMEOUT_SECONDS).rate

    def table() -> Table:
        t = Table(title=f"Repurchase rate by {by}, {start} .. {end}" + (" (with history)" if history else ""))
        for column in ("repurchasing", "of", "rate"):
            t.add_column(column, justify="right")
        shown = f"{rate.value:.2%}" if rate.HasField("value") else "n/a (empty period)"
        t.add_row(str(rate.numerator), str(rate.denominator), shown)
        return t

    state.show(rate, table)


@metrics_app.command("cohort")
def metrics_cohort(ctx: typer.Context, grain: Annotated[str, typer.Option(help="month or week.")] = "month") -> None:
    """Cohort retention: customers of each first-order cohort active k periods later."""
    state = cli(ctx)
    grains = {"month": metrics_pb2.COHORT_GRAIN_MONTH, "week": metrics_pb2.COHORT_GRAIN_WEEK}
    if grain not in grains:
        raise typer.BadParameter("must be 'month' or 'week'", param_hint="--grain")
    with calling(state, "metrics"):
        response = state.stub("metrics").GetCohortRetention(
            metrics_pb2.GetCohortRetentionRequest(shop_id=state.shop, grain=grains[grain]), timeout=CALL_TIMEOUT_SECONDS
        )

    def table() -> Table:
        width = max((len(r.active) for r in response.rows), default=0)
        t = Table(title=f"Cohort retention by {grain}")
        t.add_column("cohort")
        t.add_column("size", justify="right")
        for k in range(width):
            t.add_column(f"+{k}", justify="right")
        for row in response.rows:
            shares = [f"{a / row.size:.0%}" if row.size else "-" for a in row.active]
            t.add_row(day_text(row.cohort_start), str(row.size), *shares)
        return t

    state.show(response, table)


# ---------------------------------------------------------------- segments


@segments_app.command("eval")
def segments_eval(ctx: typer.Context) -> None:
    """Evaluate every segment of the shop into a new membership version (with a progress bar)."""
    state = cli(ctx)
    final = segmentation_pb2.EvaluateSegmentsResponse()
    with (
        calling(state, "segmentation"),
        Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=state.err, transient=True
        ) as progress,
    ):
        task = progress.add_task("starting", total=None)
        for update in state.stub("segmentation").EvaluateSegments(
            segmentation_pb2.EvaluateSegmentsRequest(shop_id=state.shop), timeout=3600
        ):
            phase = segmentation_pb2.EvaluationPhase.Name(update.phase).removeprefix("EVALUATION_PHASE_").lower()
            progress.update(task, description=f"{phase}: {update.customers:,} customers")
            final = update

    def table() -> Table:
        t = Table(title=f"Segments of {state.shop}, version {final.version} ({final.customers:,} customers)")
        t.add_column("segment")
        t.add_column("members", justify="right")
        for segment_id, count in sorted(final.members.items()):
            t.add_row(segment_id, f"{count:,}")
        return t

    state.show(final, table)


@segments_app.command("members")
def segments_members(
    ctx: typer.Context,
    segment: str,
    version: Annotated[int, typer.Option(help="Membership version; 0 = latest.")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="At most this many members.")] = 100,
) -> None:
    """Members of a segment: last order day, R/F/M, value class, activity, churn risk and why."""
    state = cli(ctx)
    rows: list[segmentation_pb2.ExportSegmentResponse] = []
    with calling(state, "segmentation"):
        request = segmentation_pb2.ExportSegmentRequest(shop_id=state.shop, segment_id=segment, version=version)
        stream = state.stub("segmentation").ExportSegment(request, timeout=CALL_TIMEOUT_SECONDS)
        for row in stream:
            rows.append(row)
            if len(rows) == limit:
                stream.cancel()
                break
    result = segmentation_pb2.ListSegmentMembersResponse(
        customer_ids=[r.customer_id for r in rows], version=rows[0].version if rows else version
    )

    def table() -> Table:
        t = Table(title=f"{segment}, version {result.version} · {len(rows)} shown")
        columns = (
            "customer",
            "last order",
            "R",
            "F",
            "M",
            "RFM segment",
            "value class",
            "activity",
            "churn risk",
            "why",
        )
        for column in columns:
            t.add_column(column)
        for r in rows:
            scored = r.HasField("rfm")
            t.add_row(
                r.customer_id,
                day_text(r.last_order_day) if r.HasField("last_order_day") else "–",
                *((str(r.rfm.r), str(r.rfm.f), str(r.rfm.m)) if scored else ("–", "–", "–")),
                r.rfm_segment or "–",
                r.value_class or "–",
                r.activity_layer or "–",
                r.churn_risk or "–",
                r.churn_reason or "",
            )
        return t

    if state.as_json:  # the ids (as ListSegmentMembers gives them) and every member's scores
        members = [reflection.json_fields(r) for r in rows]
        state.out.print_json(
            json.dumps({"version": str(result.version), "customer_ids": list(result.customer_ids), "members": members})
        )
    else:
        state.show(result, table)


# ---------------------------------------------------------------- cycle delivery


@cycle_app.command("preview")
def cycle_preview(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First possible day, e.g. 2026-12-01.")],
    count: Annotated[int, typer.Option(help="Number of deliveries.")] = 5,
    cadence: Annotated[str, typer.Option(help="daily, every-n-days, weekly or monthly.")] = "weekly",
    interval: Annotated[int, typer.Option(help="Days between deliveries for every-n-days.")] = 0,
    weekdays: Annotated[str, typer.Option(help="ISO weekdays for weekly, e.g. 1,3,5.")] = "1",
    month_days: Annotated[str, typer.Option(help="Days of month for monthly, e.g. 1,15,31.")] = "1",
) -> None:
    """Delivery dates for a rule, without writing anything."""
    state = cli(ctx)
    cadences = {
        "daily": cd.CADENCE_DAILY,
        "every-n-days": cd.CADENCE_EVERY_N_DAYS,
        "weekly": cd.CADENCE_WEEKLY,
        "monthly": cd.CADENCE_MONTHLY,
    }
    if cadence not in cadences:
        raise typer.BadParameter(f"must be one of {', '.join(cadences)}", param_hint="--cadence")
    rule = cd.ScheduleRule(
        cadence=cadences[cadence],
        interval_days=interval,
        weekdays=numbers(weekdays, "--weekdays") if cadence == "weekly" else [],  # type: ignore[arg-type]
        month_days=numbers(month_days, "--month-days") if cadence == "monthly" else [],
    )
    request = cd.PreviewScheduleRequest(
        shop_id=state.shop, rule=rule, start_date=parse_day(start, "--start"), delivery_count=count
    )
    with calling(state, "cycle_delivery"):
        response = state.stub("cycle_delivery").PreviewSchedule(request, timeout=CALL_TIMEOUT_SECONDS)

    def table() -> Table:
        t = Table(title=f"{cadence} from {start}")
        t.add_column("#", justify="right")
        t.add_column("date")
        t.add_column("weekday")
        for i, d in enumerate(response.dates):
            t.add_row(str(i + 1), day_text(d), date(d.year, d.month, d.day).strftime("%a"))
        return t

    state.show(response, table)


@cycle_app.command("subscription")
def cycle_subscription(ctx: typer.Context, subscription_id: str) -> None:
    """A subscription with its calendar."""
    state = cli(ctx)
    with calling(state, "cycle_delivery"):
        sub = (
            state.stub("cycle_delivery")
            .GetSubscription(
                cd.GetSubscriptionRequest(shop_id=state.shop, subscription_id=subscription_id),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            .subscription
        )
        zone = plan_zone(state, sub.plan_id)

    def table() -> Table:
        state_name = cd.SubscriptionState.Name(sub.state).removeprefix("SUBSCRIPTION_STATE_").lower()
        t = Table(
            title=f"Subscription {sub.subscription_id} · {sub.customer_id} · {state_name} · {sub.remaining} to come"
        )
        for column in ("#", "date", "state", "qty", "change until"):
            t.add_column(column)
        for d in sub.deliveries:
            t.add_row(
                str(d.index),
                day_text(d.date),
                cd.DeliveryState.Name(d.state).removeprefix("DELIVERY_STATE_").lower(),
                str(d.quantity),
                local_time(d.change_deadline, zone),
            )
        return t

    state.show(sub, table)


OPEN_DELIVERY_STATES = frozenset({cd.DELIVERY_STATE_SCHEDULED, cd.DELIVERY_STATE_POSTPONED, cd.DELIVERY_STATE_PAUSED})
SUBSCRIPTION_STATES = {
    cd.SubscriptionState.Name(v).removeprefix("SUBSCRIPTION_STATE_").lower(): v
    for v in cd.SubscriptionState.values()
    if v
}


@cycle_app.command("subscriptions")
def cycle_subscriptions(
    ctx: typer.Context,
    customer: Annotated[str, typer.Option(help="A buyer's subscriptions.")] = "",
    due: Annotated[str, typer.Option(help="Subscriptions with a delivery open on this day, e.g. 2026-12-01.")] = "",
    state_name: Annotated[
        str, typer.Option("--state", help=f"Only this state: {', '.join(SUBSCRIPTION_STATES)}.")
    ] = "",
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
) -> None:
    """Subscriptions of a buyer (--customer) or due on a day (--due), paged through for you."""
    state = cli(ctx)
    if bool(customer) == bool(due):
        fail(state, "give exactly one of --customer and --due")
    if state_name and state_name not in SUBSCRIPTION_STATES:
        fail(state, f"--state must be one of {', '.join(SUBSCRIPTION_STATES)}")
    request = cd.ListSubscriptionsRequest(shop_id=state.shop, customer_id=customer, page_size=min(limit, 500))
    if due:
        request.due_date.CopyFrom(parse_day(due, "--due"))
    found = cd.ListSubscriptionsResponse()
    with calling(state, "cycle_delivery"):
        while len(found.subscriptions) < limit:
            page = state.stub("cycle_delivery").ListSubscriptions(request, timeout=CALL_TIMEOUT_SECONDS)
            found.subscriptions.extend(
                s for s in page.subscriptions if not state_name or s.state == SUBSCRIPTION_STATES[state_name]
            )
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    del found.subscriptions[limit:]

    def table() -> Table:
        t = Table(title=f"Subscriptions · {customer or 'due ' + due}")
        for column in ("subscription", "customer", "plan", "state", "to come", "next delivery"):
            t.add_column(column)
        for sub in found.subscriptions:
            upcoming = [d for d in sub.deliveries if d.state in OPEN_DELIVERY_STATES]
            t.add_row(
                sub.subscription_id,
                sub.customer_id,
                sub.plan_id,
                cd.SubscriptionState.Name(sub.state).removeprefix("SUBSCRIPTION_STATE_").lower(),
                str(sub.remaining),
                day_text(upcoming[0].date) if upcoming else "–",
            )
        return t

    state.show(found, table)


# ---------------------------------------------------------------- any RPC, through reflection


@app.command("rpc")
def rpc(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="list, describe, or SERVICE/METHOD to call.")],
    name: Annotated[str, typer.Argument(help="For describe: SERVICE or SERVICE/METHOD.")] = "",
    data: Annotated[str, typer.Option(help="The request as proto3 JSON (a JSON array for a client stream).")] = "",
) -> None:
    """Any RPC of the suite, through server reflection: `rpc list`, `rpc describe S[/M]`, `rpc S/M --data JSON`."""
    state = cli(ctx)
    with calling(state, "services"):
        try:
            if what == "list":
                for service_name, target in state.targets.items():
                    for full_name in reflection.reflect(service_name, target).services:
                        state.out.print(f"{full_name}  [dim]({service_name} {target})[/dim]", soft_wrap=True)
                return
            if what == "describe":
                service_name, _, method_name = name.partition("/")
                if not service_name:
                    fail(state, "describe what? give SERVICE or SERVICE/METHOD (see `loyaltyctl rpc list`)")
                _reflected, service = reflection.find_service(state.targets, service_name)
                methods = [reflection.find_method(service, method_name)] if method_name else list(service.methods)
                for method in methods:
                    state.out.print(reflection.signature(method), markup=False, soft_wrap=True)
                    if method_name:
                        state.out.print(f"message {method.input_type.full_name} {{", markup=False)
                        for line in reflection.describe_message(method.input_type):
                            state.out.print(line, markup=False, soft_wrap=True)
                        state.out.print("}", markup=False)
                return
            service_name, _, method_name = what.partition("/")
            if not method_name:
                fail(state, f"{what!r}: expected list, describe, or SERVICE/METHOD")
            reflected, service = reflection.find_service(state.targets, service_name)
            method = reflection.find_method(service, method_name)
            for answer in reflection.call(reflected.target, state.token, method, data, CALL_TIMEOUT_SECONDS):
                state.out.print(answer, markup=False, soft_wrap=True, highlight=False)
        except reflection.UnknownName as exc:
            fail(state, str(exc))
        except (json.JSONDecodeError, json_format.ParseError) as exc:
            fail(state, f"--data is not a valid request: {exc}")


# ---------------------------------------------------------------- demo


@demo_app.command("seed")
def demo_seed(
    ctx: typer.Context,
    customers: Annotated[int, typer.Option(min=1, max=1_000_000, help="Customers to generate (1 k .. 1 M).")] = 1_000,
    seed: Annotated[int, typer.Option(help="Same seed, same shop.")] = 7,
    today: Annotated[str, typer.Option(help="The demo's 'today' (default: today, UTC).")] = "",
) -> None:
    """Generate a year of orders, refunds, top-ups, reviews, answers, redemptions and subscriptions; load them."""
    state = cli(ctx)
    day = parse_iso_day(today, "--today") if today else seed_module.today_utc()
    stubs = state.all_stubs()
    with calling(state, "services"), Progress(console=state.err, disable=not state.err.is_terminal) as progress:

        def step(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        data = seed_module.seed_demo(stubs, state.shop, customers=customers, seed=seed, today=day, step=step)
    summary = {
        "shop": state.shop,
        "customers": customers,
        "orders": len(data.orders),
        "refunds": len(data.refunds),
        "top_ups": len(data.top_ups),
        "reviews": len(data.reviews),
        "satisfaction answers": len(data.feedback),
        "mall redemptions": len(data.redemptions),
        "subscriptions": len(data.subscriptions),
    }
    if state.as_json:
        state.out.print_json(json.dumps(summary))
    else:
        t = Table(title=f"Demo shop {state.shop} (seed {seed}, today {day})")
        t.add_column("what")
        t.add_column("count", justify="right")
        for name, count in summary.items():
            t.add_row(name, str(count))
        state.out.print(t)


# ---------------------------------------------------------------- report


class Lang(StrEnum):
    zh = "zh"
    en = "en"


@app.command("report")
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory for report.<lang>.html and the PNG charts.")] = Path("report"),
    lang: Annotated[Lang, typer.Option(help="Labels in Chinese (needs a CJK font) or English.")] = Lang.zh,
    months: Annotated[int, typer.Option(min=2, max=36, help="Months of history, the current one included.")] = 12,
    today: Annotated[str, typer.Option(help="The report's 'today' (default: today in the shop's zone).")] = "",
) -> None:
    """Repurchase, retention, RFM, churn, tiers, points and deliveries as PNG charts and one self-contained page."""
    state = cli(ctx)
    given = parse_iso_day(today, "--today") if today else None
    stubs = state.all_stubs()
    with calling(state, "metrics"):
        day = given or shop_today(state)
    total = report_module.report_calls(months) + len(report_module.DRAWINGS)
    with calling(state, "services"), Progress(console=state.err, disable=not state.err.is_terminal) as progress:
        task = progress.add_task("report", total=total)
        advance = partial(progress.advance, task)
        data = report_module.collect_report(stubs, state.shop, today=day, months=months, advance=advance)
        try:
            page, charts = report_module.write_report(data, lang.value, out, advance)
        except report_module.ReportError as exc:
            fail(state, str(exc))
    result = {"html": str(page), "charts": [str(chart.path) for chart in charts]}
    if state.as_json:
        state.out.print_json(json.dumps(result))
    else:
        state.out.print(f"report: {page}", markup=False)
        for chart in charts:
            state.out.print(f"  {chart.path}  {chart.title}", markup=False)


def numbers(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None


def main() -> None:
    app(prog_name="loyaltyctl")


if __name__ == "__main__":
    main()
