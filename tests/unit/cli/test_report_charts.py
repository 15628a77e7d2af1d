"""What the report's charts say, read from the drawn figures (their artists and legends), not by eye."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from services.cli import report
from services.cli.report import Layer, Rate, ReportData

TODAY = date(2026, 11, 23)  # the 23rd: November is still running


def shop(today: date = TODAY) -> ReportData:
    months = [report.month_back(today.replace(day=1), n) for n in range(11, -1, -1)]
    rates = [Rate(n, 10 + n, n / (10 + n)) for n in range(12)]
    days = [today + timedelta(days=n) for n in range(-30, 31)]
    return ReportData(
        shop="s",
        today=today,
        months=months,
        repurchase_by_customer=rates,
        repurchase_by_order=rates,
        ninety_day=[(m, Rate(3, 10, 0.3), 0 if i < 9 else 4) for i, m in enumerate(months)],
        cohorts=[(m, 10, [10] + [2] * (11 - i)) for i, m in enumerate(months)],
        churn_risks=[Layer("none", 700, 0), Layer("watch", 90, 0), Layer("at_risk", 150, 0), Layer("churned", 60, 0)],
        tiers=[("", "", 10), ("silver", "白银会员", 5), ("gold", "Gold", 1)],
        delivery_days=days,
        deliveries={
            state: [
                1 if state == "delivered" and d < today else 2 if state == "planned" and d > today else 0 for d in days
            ]
            for state in report.DELIVERY_STATES
        },
    )


def drawn(draw: object, data: ReportData, lang: str = "en") -> Figure:
    figure = report.new_figure()
    draw(data, lang, figure)  # type: ignore[operator]
    return figure


def legend_texts(figure: Figure) -> list[str]:
    legend = figure.axes[0].get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_the_month_in_progress_is_hollow_and_explained_in_the_png() -> None:
    figure = drawn(report.draw_repurchase, shop())
    lines = {line.get_gid(): line for line in figure.axes[0].get_lines()}
    for key in ("customer", "order"):
        point = lines[f"in-progress-{key}"]
        assert np.asarray(point.get_xdata()).tolist() == ["2026-11"]
        assert point.get_markerfacecolor() == "white"
    assert "Hollow: 2026-11 still in progress (to 2026-11-23)" in legend_texts(figure)


def test_a_finished_month_is_drawn_like_the_others() -> None:
    figure = drawn(report.draw_repurchase, shop(date(2026, 11, 30)))
    assert not [line for line in figure.axes[0].get_lines() if (line.get_gid() or "").startswith("in-progress")]
    assert not [t for t in legend_texts(figure) if "progress" in t]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_ninety_day_chart_explains_its_hollow_marker_inside_the_png(lang: str) -> None:
    texts = legend_texts(drawn(report.draw_ninety_day, shop(), lang))
    assert texts == [report.text(lang, "window_closed"), report.text(lang, "window_open")]
    legend = drawn(report.draw_ninety_day, shop()).axes[0].get_legend()
    assert legend is not None
    hollow = legend.legend_handles[1]
    assert isinstance(hollow, Line2D)
    assert hollow.get_markerfacecolor() == "white"


def test_the_cohort_heatmap_hatches_this_months_cells_only() -> None:
    data = shop()
    figure = drawn(report.draw_cohorts, data)
    cells = [p for p in figure.axes[0].patches if isinstance(p, Rectangle) and p.get_gid() == "in-progress"]
    # One per cohort, on the diagonal of the current month: column = months from the cohort to November.
    assert {(round(c.get_x() + 0.5), round(c.get_y() + 0.5)) for c in cells} == {(11 - row, row) for row in range(12)}
    assert len(cells) == 12
    assert all(c.get_hatch() == "///" for c in cells)
    assert legend_texts(figure) == ["Hatched: this month, still in progress"]


def test_churn_levels_are_bars_as_long_as_their_counts() -> None:
    figure = drawn(report.draw_churn_levels, shop())
    bars = [p for p in figure.axes[0].patches if isinstance(p, Rectangle)]
    assert [b.get_width() for b in bars] == [700, 90, 150, 60]  # lengths compare: no hourglass
    assert all(b.get_x() == 0 for b in bars)
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert "150  (15.0%)" in labels


def test_deliveries_name_today_and_list_only_the_states_that_occur() -> None:
    figure = drawn(report.draw_deliveries, shop())
    assert legend_texts(figure) == ["Delivered", "Planned"]
    today = [t for t in figure.axes[0].texts if isinstance(t, Text) and t.get_gid() == "today"]
    assert [t.get_text() for t in today] == ["today"]


def test_tier_names_keep_their_script_when_a_font_has_it_and_fall_back_to_the_code_otherwise() -> None:
    assert report.tier_label("silver", "白银会员", "en", cjk=True) == "白银会员"
    assert report.tier_label("silver", "白银会员", "en", cjk=False) == "silver"
    assert report.tier_label("gold", "Gold", "en", cjk=False) == "Gold"
    assert report.tier_label("", "", "zh", cjk=True) == "未定级"


def test_points_before_the_ledger_began_say_so_instead_of_drawing_zero_bars() -> None:
    data = shop()
    data.points_months = [date(2026, 11, 1)]
    data.points = {flow: [0] for flow in report.POINT_FLOWS}
    figure = drawn(report.draw_points, data)
    assert [t.get_text() for t in figure.axes[0].texts] == ["n/a"]
    assert not figure.axes[0].patches
