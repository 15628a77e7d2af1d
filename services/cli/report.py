"""`loyaltyctl report`: the shop's repurchase story as PNG charts and one self-contained HTML file.

Three steps with clear seams: `collect_report` reads everything through the
public RPCs into plain data (`ReportData`); `render_charts` draws the PNGs with
matplotlib's object API (no pyplot global state); `render_html` writes one file
with the charts embedded as data URIs, so it can be mailed or opened offline.
Labels come in Chinese and English; Chinese needs a CJK font (Debian's
fonts-noto-cjk), found by `cjk_font` or refused with a one-line hint.
"""

from __future__ import annotations

import base64
import contextlib
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.metrics.v1 import metrics_pb2
from loyalty.points.v1 import points_pb2
from loyalty.segmentation.v1 import segmentation_pb2 as sg
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from services.cli.seed import Stubs, d

TIMEOUT = 60.0
LANGS = ("zh", "en")
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "PingFang SC",
    "Microsoft YaHei",
    "SimHei",
)
STAGE_BANDS = ((0.0, 0.15, "acquisition"), (0.15, 0.30, "hybrid"), (0.30, 1.0, "loyalty"))
CHURN_ORDER = ("none", "watch", "at_risk", "churned")
VALUE_CLASS_ORDER = ("重要价值", "重要发展", "重要保持", "重要挽留", "一般价值", "一般发展", "一般保持", "一般挽留")
DELIVERY_DAYS_BACK, DELIVERY_DAYS_AHEAD = 30, 30
POINT_FLOWS = ("issued", "redeemed", "expired", "clawed_back")
DELIVERY_STATES = ("delivered", "shipped", "created", "planned", "paused", "skipped")  # stacked bottom to top


class ReportError(Exception):
    """A report that cannot be made as asked (e.g. no CJK font for --lang zh); shown as one line."""


TEXT: dict[str, dict[str, str]] = {
    "title": {"zh": "复购与忠诚度报告", "en": "Repurchase and loyalty report"},
    "generated": {"zh": "店铺 {shop} · 截至 {today}", "en": "Shop {shop} · as of {today}"},
    "headline": {"zh": "近 {months} 个月概览", "en": "The last {months} months"},
    "customers": {"zh": "下单客户", "en": "Customers"},
    "orders": {"zh": "订单", "en": "Orders"},
    "net_revenue": {"zh": "净销售额", "en": "Net revenue"},
    "aov": {"zh": "客单价", "en": "Average order value"},
    "repurchase_by_customer": {"zh": "复购率(按人)", "en": "Repurchase rate (by customer)"},
    "repurchase_by_order": {"zh": "复购率(按单)", "en": "Repurchase rate (by order)"},
    "ninety_day": {"zh": "90 天复购率", "en": "90-day repurchase rate"},
    "stage": {"zh": "经营阶段", "en": "Stage"},
    "nps": {"zh": "净推荐值 NPS", "en": "NPS"},
    "undefined": {"zh": "无数据", "en": "n/a"},
    "month": {"zh": "月份", "en": "Month"},
    "rate": {"zh": "比率", "en": "Rate"},
    "chart_repurchase": {"zh": "每月复购率", "en": "Repurchase rate by month"},
    "chart_repurchase_note": {
        "zh": "按人:当月下单 ≥2 次的客户 ÷ 当月下单客户;按单:当月非首单 ÷ 当月订单。全额退款订单不计。"
        "空心点:本月尚未结束,只含截至今天的订单。",
        "en": "By customer: customers with ≥ 2 orders in the month ÷ customers with ≥ 1. "
        "By order: orders that are not the customer's first in the month ÷ orders. Fully refunded orders excluded. "
        "Hollow: the month in progress, orders to today only.",
    },
    "chart_ninety": {
        "zh": "90 天复购率与经营阶段(按首购月份)",
        "en": "90-day repurchase and stage, by first-order month",
    },
    "chart_ninety_note": {
        "zh": "首单在该月的新客中,90 天内再次购买的比例。<15% 获客模式,15–30% 混合模式,≥30% 忠诚模式。"
        "空心点:窗口未满 90 天。",
        "en": "Share of the month's new customers who bought again within 90 days. Under 15 %: acquisition mode; "
        "15–30 %: hybrid; 30 % and above: loyalty mode. Hollow: some 90-day windows still open.",
    },
    "window_closed": {"zh": "实心:90 天窗口均已结束", "en": "Filled: every 90-day window has closed"},
    "window_open": {"zh": "空心:部分客户的 90 天窗口未结束", "en": "Hollow: some 90-day windows still open"},
    "month_in_progress": {
        "zh": "空心:{month} 尚未结束(截至 {today})",
        "en": "Hollow: {month} still in progress (to {today})",
    },
    "cells_in_progress": {"zh": "斜线格:本月尚未结束", "en": "Hatched: this month, still in progress"},
    "today": {"zh": "今天", "en": "today"},
    "acquisition": {"zh": "获客模式", "en": "Acquisition"},
    "hybrid": {"zh": "混合模式", "en": "Hybrid"},
    "loyalty": {"zh": "忠诚模式", "en": "Loyalty"},
    "chart_cohort": {"zh": "月度同期群留存", "en": "Monthly cohort retention"},
    "chart_cohort_note": {
        "zh": "行:首购月份(括号内为人数);列:之后第 n 个月;格内:当月仍有购买的客户占比。斜线格:本月尚未结束。",
        "en": "Rows: first-order month (size); columns: months after it; cells: share of the cohort buying that month. "
        "Hatched: the month in progress.",
    },
    "cohort": {"zh": "首购月份", "en": "Cohort"},
    "months_after": {"zh": "之后第 n 个月", "en": "Months after first order"},
    "chart_rfm": {"zh": "RFM 八类客户:人数与销售额占比", "en": "RFM classes: share of customers and of revenue"},
    "chart_rfm_note": {
        "zh": "最近一次分层评估的结果;销售额为客户累计净消费。",
        "en": "From the latest segment evaluation; revenue is each customer's net spend to date.",
    },
    "share_customers": {"zh": "人数占比", "en": "Share of customers"},
    "share_revenue": {"zh": "销售额占比", "en": "Share of revenue"},
    "chart_churn": {"zh": "流失风险分级", "en": "Churn-risk levels"},
    "chart_churn_note": {
        "zh": "按距上次购买的时间相对于客户自己(或店铺中位)购买间隔分级;条长为人数。",
        "en": "Levels by time since the last order against the customer's own (or the shop's median) interval; "
        "bar length is the number of customers.",
    },
    "chart_tiers": {"zh": "会员等级分布", "en": "Members by tier"},
    "chart_tiers_note": {"zh": "持有积分账户的会员。", "en": "Members with a points account."},
    "no_tier": {"zh": "未定级", "en": "No tier yet"},
    "members": {"zh": "会员数", "en": "Members"},
    "chart_points": {"zh": "积分发放、兑换与过期", "en": "Points issued, redeemed and expired"},
    "chart_points_note": {
        "zh": "按积分账本记账日期(店铺时区)汇总,自账本第一笔记录的月份起;兑换已扣除退款返还。",
        "en": "By ledger date in the shop's zone, from the ledger's first month; "
        "redeemed is net of spends given back on refunds.",
    },
    "issued": {"zh": "发放", "en": "Issued"},
    "redeemed": {"zh": "兑换", "en": "Redeemed"},
    "expired": {"zh": "过期", "en": "Expired"},
    "clawed_back": {"zh": "退款扣回", "en": "Clawed back"},
    "points": {"zh": "积分", "en": "Points"},
    "chart_deliveries": {"zh": "周期购每日配送", "en": "Subscription deliveries per day"},
    "chart_deliveries_note": {
        "zh": "前后各 30 天;竖线为今天;只列出出现过的状态。",
        "en": "30 days either side of today (the vertical line); only the states that occur are listed.",
    },
    "deliveries": {"zh": "配送数", "en": "Deliveries"},
    "planned": {"zh": "待生成", "en": "Planned"},
    "paused": {"zh": "暂停中", "en": "Paused"},
    "created": {"zh": "已生成订单", "en": "Order created"},
    "shipped": {"zh": "已发货", "en": "Shipped"},
    "delivered": {"zh": "已送达", "en": "Delivered"},
    "skipped": {"zh": "已跳过", "en": "Skipped"},
    "none": {"zh": "健康", "en": "Healthy"},
    "watch": {"zh": "观察", "en": "Watch"},
    "at_risk": {"zh": "流失预警", "en": "At risk"},
    "churned": {"zh": "已流失", "en": "Churned"},
    "重要价值": {"zh": "重要价值", "en": "Important value"},
    "重要发展": {"zh": "重要发展", "en": "Important develop"},
    "重要保持": {"zh": "重要保持", "en": "Important keep"},
    "重要挽留": {"zh": "重要挽留", "en": "Important retain"},
    "一般价值": {"zh": "一般价值", "en": "General value"},
    "一般发展": {"zh": "一般发展", "en": "General develop"},
    "一般保持": {"zh": "一般保持", "en": "General keep"},
    "一般挽留": {"zh": "一般挽留", "en": "General retain"},
    "not_evaluated": {
        "zh": "尚未运行分层评估(loyaltyctl segments eval)。",
        "en": "No segment evaluation yet (loyaltyctl segments eval).",
    },
}


def text(lang: str, key: str, **values: object) -> str:
    return TEXT[key][lang].format(**values) if values else TEXT[key][lang]


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Rate:
    numerator: int
    denominator: int
    value: float | None


@dataclass(frozen=True)
class Layer:
    label: str
    customers: int
    net_revenue_minor: int


@dataclass
class ReportData:
    shop: str
    today: date
    currency: str = "CNY"
    months: list[date] = field(default_factory=list)
    overview: dict[str, Any] = field(default_factory=dict)
    repurchase_by_customer: list[Rate] = field(default_factory=list)
    repurchase_by_order: list[Rate] = field(default_factory=list)
    ninety_day: list[tuple[date, Rate, int]] = field(default_factory=list)  # (cohort month, rate, windows open)
    cohorts: list[tuple[date, int, list[int]]] = field(default_factory=list)  # (cohort, size, active per period)
    value_classes: list[Layer] = field(default_factory=list)
    churn_risks: list[Layer] = field(default_factory=list)
    evaluated: bool = False
    tiers: list[tuple[str, str, int]] = field(default_factory=list)  # (code, name, members)
    points_months: list[date] = field(default_factory=list)
    points: dict[str, list[int]] = field(default_factory=dict)  # flow -> amount per month of points_months
    delivery_days: list[date] = field(default_factory=list)
    deliveries: dict[str, list[int]] = field(default_factory=dict)  # state -> deliveries per day of delivery_days


def month_back(first_of_month: date, n: int) -> date:
    index = first_of_month.year * 12 + first_of_month.month - 1 - n
    return date(index // 12, index % 12 + 1, 1)


def month_end(first_of_month: date) -> date:
    return month_back(first_of_month, -1) - timedelta(days=1)


def month_in_progress(data: ReportData) -> bool:
    """Whether the report's last month is still running: its numbers then cover part of it only."""
    return bool(data.months) and data.today < month_end(data.months[-1])


def months_between(earlier: date, later: date) -> int:
    return (later.year - earlier.year) * 12 + later.month - earlier.month


def rate_of(value: metrics_pb2.RateValue) -> Rate:
    return Rate(value.numerator, value.denominator, value.value if value.HasField("value") else None)


def day_of(value: common_pb2.Date) -> date:
    return date(value.year, value.month, value.day)


Advance = Callable[[int], None]


def collect_report(
    stubs: Stubs, shop: str, *, today: date, months: int, advance: Advance = lambda n: None
) -> ReportData:
    """Everything the report shows, read through the public RPCs (about 2 × months + 8 calls)."""
    data = ReportData(shop=shop, today=today)
    current = today.replace(day=1)
    data.months = [month_back(current, n) for n in range(months - 1, -1, -1)]
    metrics = stubs.metrics
    period_start = d(data.months[0])
    overview = metrics.GetShopOverview(
        metrics_pb2.GetShopOverviewRequest(shop_id=shop, period_start=period_start, period_end=d(today)),
        timeout=TIMEOUT,
    )
    data.currency = overview.net_revenue.currency or "CNY"
    data.overview = {
        "customers": overview.customers,
        "orders": overview.orders,
        "net_revenue_minor": overview.net_revenue.amount_minor,
        "aov_minor": overview.aov_minor if overview.HasField("aov_minor") else None,
        "repurchase_by_customer": rate_of(overview.repurchase_by_customer),
        "repurchase_by_order": rate_of(overview.repurchase_by_order),
        "ninety_day": rate_of(overview.ninety_day_repurchase),
        "stage": metrics_pb2.RepurchaseStage.Name(overview.stage).removeprefix("REPURCHASE_STAGE_").lower(),
        "nps": overview.nps if overview.HasField("nps") else None,
    }
    advance(1)
    for month in data.months:
        end = min(month_end(month), today)
        for basis, rates in (
            (metrics_pb2.REPURCHASE_BASIS_CUSTOMER, data.repurchase_by_customer),
            (metrics_pb2.REPURCHASE_BASIS_ORDER, data.repurchase_by_order),
        ):
            response = metrics.GetRepurchaseRate(
                metrics_pb2.GetRepurchaseRateRequest(
                    shop_id=shop, period_start=d(month), period_end=d(end), basis=basis
                ),
                timeout=TIMEOUT,
            )
            rates.append(rate_of(response.rate))
        stage = metrics.GetRepurchaseStage(
            metrics_pb2.GetRepurchaseStageRequest(
                shop_id=shop, cohort_start=d(month), cohort_end=d(end), as_of=d(today)
            ),
            timeout=TIMEOUT,
        )
        data.ninety_day.append((month, rate_of(stage.rate), stage.window_open))
        advance(1)
    cohorts = metrics.GetCohortRetention(
        metrics_pb2.GetCohortRetentionRequest(shop_id=shop, grain=metrics_pb2.COHORT_GRAIN_MONTH, as_of=d(today)),
        timeout=TIMEOUT,
    )
    data.cohorts = [
        (day_of(row.cohort_start), row.size, list(row.active))
        for row in cohorts.rows
        if day_of(row.cohort_start) >= data.months[0]
    ]
    advance(1)
    layers = stubs.segmentation.GetLayerSummary(sg.GetLayerSummaryRequest(shop_id=shop), timeout=TIMEOUT)
    data.evaluated = layers.version > 0
    data.value_classes = [Layer(c.label, c.customers, c.net_revenue_minor) for c in layers.value_classes]
    data.churn_risks = [Layer(c.label, c.customers, c.net_revenue_minor) for c in layers.churn_risks]
    advance(1)
    points = stubs.points.GetPointsSummary(
        points_pb2.GetPointsSummaryRequest(shop_id=shop, from_month=d(data.months[0]), to_month=d(current)),
        timeout=TIMEOUT,
    )
    data.tiers = [(t.tier_code, t.name, t.members) for t in points.tiers]
    active = [m for m in points.months if any(getattr(m, flow) for flow in POINT_FLOWS)]
    shown = list(points.months)[list(points.months).index(active[0]) :] if active else list(points.months)[-1:]
    data.points_months = [day_of(m.month) for m in shown]
    data.points = {flow: [getattr(m, flow) for m in shown] for flow in POINT_FLOWS}
    advance(1)
    calendar = stubs.cycle_delivery.GetDeliveryCalendar(
        cd.GetDeliveryCalendarRequest(
            shop_id=shop,
            from_date=d(today - timedelta(days=DELIVERY_DAYS_BACK)),
            to_date=d(today + timedelta(days=DELIVERY_DAYS_AHEAD)),
        ),
        timeout=TIMEOUT,
    )
    data.delivery_days = [day_of(x.day) for x in calendar.days]
    data.deliveries = {state: [getattr(x, state) for x in calendar.days] for state in DELIVERY_STATES}
    advance(1)
    return data


def report_calls(months: int) -> int:
    """Progress steps `collect_report` advances through."""
    return months + 5


# ---------------------------------------------------------------- charts


def cjk_font() -> str | None:
    """The first installed font family with Chinese glyphs, or None.

    matplotlib caches the font list the first time it runs; a font installed
    later (fonts-noto-cjk added after a first chart) is not in that cache, so
    on a miss the system font folders are scanned once more before giving up.
    """
    found = known_cjk_font()
    if found is None:
        known = {entry.fname for entry in font_manager.fontManager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                with contextlib.suppress(OSError, RuntimeError, ValueError):  # an unreadable font is skipped
                    font_manager.fontManager.addfont(path)
        found = known_cjk_font()
    return found


def known_cjk_font() -> str | None:
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def font_families(lang: str) -> list[str]:
    cjk = cjk_font()
    if lang == "zh" and cjk is None:
        raise ReportError(
            "no font with Chinese glyphs is installed: apt-get install fonts-noto-cjk (Debian), or use --lang en"
        )
    return [cjk, "DejaVu Sans"] if lang == "zh" and cjk else ["DejaVu Sans", *([cjk] if cjk else [])]


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    note: str
    path: Path


COLORS = {
    "customer": "#2f6fb0",
    "order": "#e07b39",
    "issued": "#3a8f5c",
    "redeemed": "#2f6fb0",
    "expired": "#b0413e",
    "clawed_back": "#8c8c8c",
    "planned": "#9fc5e8",
    "paused": "#e8d8a8",
    "created": "#2f6fb0",
    "shipped": "#e0a030",
    "delivered": "#3a8f5c",
    "skipped": "#c8c8c8",
}
TIER_COLORS = ("#c8c8c8", "#a7b8c8", "#d4af37", "#6c5b7b", "#2f6fb0")
BAND_COLORS = {"acquisition": "#f4d6d4", "hybrid": "#fbeccb", "loyalty": "#d7ecd9"}


def new_figure(width: float = 9.0, height: float = 4.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    figure.set_facecolor("white")
    return figure


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def month_label(month: date) -> str:
    return f"{month:%Y-%m}"


def say_no_data(axes: Any, lang: str) -> None:
    axes.text(0.5, 0.5, text(lang, "undefined"), ha="center", va="center", fontsize=14, color="#888888")
    axes.set_axis_off()


def draw_repurchase(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    labels = [month_label(m) for m in data.months]
    partial = month_in_progress(data)
    complete = len(labels) - 1 if partial else len(labels)
    for key, rates in (("customer", data.repurchase_by_customer), ("order", data.repurchase_by_order)):
        values = [r.value if r.value is not None else float("nan") for r in rates]
        color = COLORS[key]
        axes.plot(
            labels[:complete], values[:complete], marker="o", color=color, label=text(lang, f"repurchase_by_{key}")
        )
        if partial:
            axes.plot(labels[-2:], values[-2:], linestyle=":", color=color)
            axes.plot(labels[-1:], values[-1:], "o", color=color, markerfacecolor="white", gid=f"in-progress-{key}")
    handles, names = axes.get_legend_handles_labels()
    if partial:
        handles.append(hollow_marker())
        names.append(text(lang, "month_in_progress", month=labels[-1], today=data.today.isoformat()))
    axes.yaxis.set_major_formatter(lambda y, _: f"{y * 100:.0f}%")
    axes.set_ylim(bottom=0)
    axes.set_xlabel(text(lang, "month"))
    axes.tick_params(axis="x", rotation=45)
    axes.grid(alpha=0.3)
    axes.legend(handles, names, loc="upper left", fontsize=8)


def hollow_marker() -> Line2D:
    return Line2D([], [], marker="o", linestyle="none", color="#555555", markerfacecolor="white")


def filled_marker() -> Line2D:
    return Line2D([], [], marker="o", linestyle="none", color="#2f6fb0", markerfacecolor="#2f6fb0")


def draw_ninety_day(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    values = [r.value for _, r, _ in data.ninety_day]
    top = max([0.4, *(v * 1.15 for v in values if v is not None)])
    for low, high, band in STAGE_BANDS:
        axes.axhspan(low, min(high, top), color=BAND_COLORS[band], zorder=0)
        axes.text(
            0.995,
            (low + min(high, top)) / 2,
            text(lang, band),
            transform=axes.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=9,
            color="#555555",
        )
    labels = [month_label(m) for m, _, _ in data.ninety_day]
    for i, (_, rate, still_open) in enumerate(data.ninety_day):
        if rate.value is None:
            continue
        filled = still_open == 0
        axes.plot(i, rate.value, "o", markersize=8, color="#2f6fb0", markerfacecolor="#2f6fb0" if filled else "white")
    axes.set_xticks(range(len(labels)), labels, rotation=45)
    axes.set_ylim(0, top)
    axes.yaxis.set_major_formatter(lambda y, _: f"{y * 100:.0f}%")
    axes.set_xlabel(text(lang, "cohort"))
    axes.grid(alpha=0.3, axis="y")
    axes.legend(
        [filled_marker(), hollow_marker()],
        [text(lang, "window_closed"), text(lang, "window_open")],
        loc="upper left",
        fontsize=8,
    )


def draw_cohorts(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    if not data.cohorts:
        say_no_data(axes, lang)
        return
    width = max(len(active) for _, _, active in data.cohorts)
    grid = [[float("nan")] * width for _ in data.cohorts]
    for row, (_, size, active) in enumerate(data.cohorts):
        for column, count in enumerate(active):
            grid[row][column] = count / size if size else float("nan")
    later = [v for r in grid for v in r[1:] if v == v]  # retention after the first month, NaN left out
    vmax = max([0.05, *later])
    image = axes.imshow(grid, cmap="YlGnBu", vmin=0, vmax=vmax, aspect="auto")
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            if value == value:  # not NaN
                dark = column == 0 or value > 0.5 * vmax
                axes.text(
                    column,
                    row,
                    f"{value * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "#222222",
                )
    if month_in_progress(data):
        current = data.months[-1]
        for row, (cohort, _, active) in enumerate(data.cohorts):
            column = months_between(cohort, current)
            if 0 <= column < len(active):
                axes.add_patch(in_progress_cell(column, row))
        axes.legend(
            handles=[in_progress_cell(0, 0)], labels=[text(lang, "cells_in_progress")], loc="lower right"
        )  # the empty triangle
    axes.set_yticks(range(len(data.cohorts)), [f"{month_label(c)} ({size})" for c, size, _ in data.cohorts])
    axes.set_xticks(range(width), [str(n) for n in range(width)])
    axes.set_xlabel(text(lang, "months_after"))
    figure.colorbar(image, ax=axes, format=lambda y, _: f"{y * 100:.0f}%")


def in_progress_cell(column: int, row: int) -> Rectangle:
    return Rectangle(
        (column - 0.5, row - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#444444", linewidth=0, gid="in-progress"
    )


def draw_value_classes(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    if not data.value_classes:
        say_no_data(axes, lang)
        return
    by_label = {layer.label: layer for layer in data.value_classes}
    labels = [label for label in VALUE_CLASS_ORDER if label in by_label]
    customers = sum(layer.customers for layer in data.value_classes) or 1
    revenue = sum(layer.net_revenue_minor for layer in data.value_classes) or 1
    positions = range(len(labels))
    customer_shares = [by_label[label].customers / customers for label in labels]
    revenue_shares = [by_label[label].net_revenue_minor / revenue for label in labels]
    axes.bar(
        [p - 0.2 for p in positions],
        customer_shares,
        0.4,
        color=COLORS["customer"],
        label=text(lang, "share_customers"),
    )
    axes.bar(
        [p + 0.2 for p in positions], revenue_shares, 0.4, color=COLORS["order"], label=text(lang, "share_revenue")
    )
    axes.set_xticks(list(positions), [text(lang, label) for label in labels], rotation=20)
    axes.yaxis.set_major_formatter(lambda y, _: f"{y * 100:.0f}%")
    axes.grid(alpha=0.3, axis="y")
    axes.legend()


def draw_churn_levels(data: ReportData, lang: str, figure: Figure) -> None:
    """A labelled bar per level, longest first in the order of worsening risk: lengths compare, shapes do not."""
    axes = figure.add_subplot()
    counts = {layer.label: layer.customers for layer in data.churn_risks}
    levels = [level for level in CHURN_ORDER if level in counts]
    if not levels:
        say_no_data(axes, lang)
        return
    total = sum(counts.values()) or 1
    colors = {"none": "#3a8f5c", "watch": "#e0a030", "at_risk": "#e07b39", "churned": "#b0413e"}
    rows = range(len(levels))
    bars = axes.barh(rows, [counts[level] for level in levels], color=[colors[level] for level in levels], height=0.7)
    axes.bar_label(bars, [f"{counts[level]:,}  ({counts[level] / total * 100:.1f}%)" for level in levels], padding=4)
    axes.set_yticks(list(rows), [text(lang, level) for level in levels])
    axes.invert_yaxis()
    axes.set_xlim(0, max(counts.values()) * 1.3)
    axes.set_xlabel(text(lang, "customers"))
    axes.grid(alpha=0.3, axis="x")


def tier_label(code: str, name: str, lang: str, *, cjk: bool) -> str:
    """A tier's name as the shop wrote it; its code where no installed font has the name's glyphs."""
    if name and (cjk or not needs_cjk(name)):
        return name
    return code or name or text(lang, "no_tier")


def needs_cjk(label: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in label)


def draw_tiers(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    cjk = cjk_font() is not None
    labels = [tier_label(code, name, lang, cjk=cjk) for code, name, _ in data.tiers]
    members = [n for _, _, n in data.tiers]
    bars = axes.bar(labels, members, color=TIER_COLORS)  # cycled when the ladder is longer
    axes.bar_label(bars)
    axes.set_ylabel(text(lang, "members"))
    axes.grid(alpha=0.3, axis="y")


def draw_points(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    if not any(any(amounts) for amounts in data.points.values()):  # e.g. a report dated before the ledger began
        say_no_data(axes, lang)
        return
    labels = [month_label(m) for m in data.points_months]
    width = 0.2
    for i, flow in enumerate(POINT_FLOWS):
        offset = (i - 1.5) * width
        axes.bar(
            [p + offset for p in range(len(labels))],
            data.points[flow],
            width,
            color=COLORS[flow],
            label=text(lang, flow),
        )
    axes.set_xticks(range(len(labels)), labels, rotation=45)
    axes.set_ylabel(text(lang, "points"))
    axes.yaxis.set_major_formatter(lambda y, _: f"{y:,.0f}")
    axes.grid(alpha=0.3, axis="y")
    axes.legend()


def draw_deliveries(data: ReportData, lang: str, figure: Figure) -> None:
    axes = figure.add_subplot()
    positions = list(range(len(data.delivery_days)))
    bottom = [0] * len(positions)
    occurring = [state for state in DELIVERY_STATES if any(data.deliveries.get(state, []))]
    for i, state in enumerate(occurring):
        values = data.deliveries[state]
        axes.bar(
            positions, values, bottom=bottom, color=COLORS[state], label=text(lang, state), width=0.85, zorder=2 + i
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    top = max([1, *bottom]) * 1.25  # headroom for the legend
    axes.set_ylim(0, top)
    if data.today in data.delivery_days:
        x = data.delivery_days.index(data.today)
        axes.axvline(x, color="#333333", linewidth=1)
        axes.text(x + 0.3, top * 0.97, text(lang, "today"), va="top", fontsize=8, color="#333333", gid="today")
    axes.set_xticks(positions[::7], [f"{day:%m-%d}" for day in data.delivery_days[::7]])
    axes.set_ylabel(text(lang, "deliveries"))
    axes.grid(alpha=0.3, axis="y")
    if occurring:
        axes.legend(ncols=len(occurring), loc="upper left", fontsize=8)
    else:
        say_no_data(axes, lang)


DRAWINGS: tuple[tuple[str, Callable[[ReportData, str, Figure], None]], ...] = (
    ("repurchase", draw_repurchase),
    ("ninety", draw_ninety_day),
    ("cohort", draw_cohorts),
    ("rfm", draw_value_classes),
    ("churn", draw_churn_levels),
    ("tiers", draw_tiers),
    ("points", draw_points),
    ("deliveries", draw_deliveries),
)


def render_charts(data: ReportData, lang: str, out_dir: Path, advance: Advance = lambda n: None) -> list[Chart]:
    """One PNG per chart in `out_dir`, named <chart>.<lang>.png."""
    from matplotlib import rc_context

    families = font_families(lang)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = []
    with rc_context({"font.family": families, "axes.unicode_minus": False}):
        for name, draw in DRAWINGS:
            figure = new_figure(height=5.0 if name == "cohort" else 4.2)
            figure.suptitle(text(lang, f"chart_{name}"), fontsize=13)
            draw(data, lang, figure)
            path = out_dir / f"{name}.{lang}.png"
            figure.savefig(path, format="png")
            charts.append(Chart(name, text(lang, f"chart_{name}"), text(lang, f"chart_{name}_note"), path))
            advance(1)
    return charts


# ---------------------------------------------------------------- html


def money(amount_minor: float | None, currency: str) -> str:
    if amount_minor is None:
        return "–"
    symbol = "¥" if currency == "CNY" else f"{currency} "
    return f"{symbol}{amount_minor / 100:,.2f}"


def headline_cards(data: ReportData, lang: str) -> list[tuple[str, str]]:
    o = data.overview
    stage = o.get("stage", "unspecified")
    return [
        (text(lang, "customers"), f"{o.get('customers', 0):,}"),
        (text(lang, "orders"), f"{o.get('orders', 0):,}"),
        (text(lang, "net_revenue"), money(o.get("net_revenue_minor"), data.currency)),
        (text(lang, "aov"), money(o.get("aov_minor"), data.currency)),
        (text(lang, "repurchase_by_customer"), percent(o["repurchase_by_customer"].value)),
        (text(lang, "repurchase_by_order"), percent(o["repurchase_by_order"].value)),
        (text(lang, "ninety_day"), percent(o["ninety_day"].value)),
        (text(lang, "stage"), text(lang, stage) if stage in TEXT else text(lang, "undefined")),
        (text(lang, "nps"), "–" if o.get("nps") is None else f"{o['nps']:.0f}"),
    ]


STYLE = """
body { font-family: "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1040px; padding: 24px; color: #1d2733; background: #f6f7f9; }
h1 { margin-bottom: 4px; } .sub { color: #5b6672; margin-top: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; margin: 16px 0 28px; }
.card { background: white; border-radius: 8px; padding: 12px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .label { font-size: 13px; color: #5b6672; } .card .value { font-size: 22px; font-weight: 600; margin-top: 4px; }
section { background: white; border-radius: 8px; padding: 16px; margin-bottom: 20px;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); }
section h2 { font-size: 18px; margin: 0 0 6px; } section p { color: #5b6672; font-size: 13px; margin: 0 0 10px; }
section img { width: 100%; height: auto; display: block; }
.warning { background: #fff4e0; border-left: 4px solid #e0a030; padding: 8px 12px; }
"""


def render_html(data: ReportData, charts: Sequence[Chart], lang: str) -> str:
    """One self-contained page: headline numbers, then each chart as an embedded PNG with its definition."""
    esc = html.escape
    cards = "".join(
        f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div></div>'
        for label, value in headline_cards(data, lang)
    )
    sections = []
    for chart in charts:
        encoded = base64.b64encode(chart.path.read_bytes()).decode("ascii")
        sections.append(
            f'<section id="{esc(chart.name)}"><h2>{esc(chart.title)}</h2><p>{esc(chart.note)}</p>'
            f'<img alt="{esc(chart.title)}" src="data:image/png;base64,{encoded}"></section>'
        )
    warning = "" if data.evaluated else f'<p class="warning">{esc(text(lang, "not_evaluated"))}</p>'
    title = text(lang, "title")
    html_lang = "zh-CN" if lang == "zh" else "en"
    return (
        f'<!DOCTYPE html>\n<html lang="{html_lang}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · {esc(data.shop)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<p class="sub">{esc(text(lang, "generated", shop=data.shop, today=data.today.isoformat()))}</p>'
        f"<h2>{esc(text(lang, 'headline', months=len(data.months)))}</h2>"
        f'<div class="cards">{cards}</div>{warning}{"".join(sections)}</body></html>\n'
    )


def write_report(
    data: ReportData, lang: str, out_dir: Path, advance: Advance = lambda n: None
) -> tuple[Path, list[Chart]]:
    """The charts and `report.<lang>.html` in `out_dir`."""
    charts = render_charts(data, lang, out_dir, advance)
    page = out_dir / f"report.{lang}.html"
    page.write_text(render_html(data, charts, lang), encoding="utf-8")
    return page, charts
