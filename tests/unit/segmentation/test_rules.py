"""The segment rule language: meaning, precedence, and clear errors for bad or hostile rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.segmentation.rules import MAX_DEPTH, MAX_RULE_LENGTH, evaluate, parse_rule

VIP = {"recency_days": 12.0, "order_count": 7.0, "net_revenue": 88000.0, "tier": "gold", "channel": "h5"}
SLEEPER = {"recency_days": 200.0, "order_count": 1.0, "net_revenue": 3000.0, "tier": "basic", "channel": "app"}


def matches(rule: str, row: dict[str, object], tags: frozenset[str] = frozenset()) -> bool:
    return evaluate(parse_rule(rule), row, tags)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "vip", "sleeper"),
    [
        ("recency_days > 90", False, True),
        ("order_count >= 2 and net_revenue between 10000 and 100000", True, False),
        ('tier = "gold" or channel in ("app", "pos")', True, True),
        ('channel not in ("app")', True, False),
        ("not (recency_days <= 30)", False, True),
        ('tier != "gold"', False, True),
        ("order_count = 1 or recency_days < 0", False, True),
    ],
)
def test_meaning(rule: str, vip: bool, sleeper: bool) -> None:
    assert (matches(rule, VIP), matches(rule, SLEEPER)) == (vip, sleeper)


def test_and_binds_tighter_than_or_and_keywords_ignore_case() -> None:
    # true OR (false AND false) = true; (true OR false) AND false would be false.
    assert matches('order_count > 5 OR recency_days > 100 AND tier = "none"', VIP)


def test_tags_and_unicode() -> None:
    assert matches('has_tag("高价值") and not has_tag("黑名单")', VIP, frozenset({"高价值"}))
    assert not matches('has_tag("高价值") and not has_tag("黑名单")', VIP, frozenset({"高价值", "黑名单"}))
    assert matches('tier = "金卡 \\"VIP\\""', {"tier": '金卡 "VIP"'})


def test_missing_values_make_comparisons_false() -> None:
    assert not matches("probability_alive < 0.5", {})
    assert matches("not (probability_alive < 0.5)", {})


def error_of(rule: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_rule(rule)
    return caught.value.violations[0].description


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("recency_dayz > 3", "position 0: unknown field 'recency_dayz'"),
        ("order_count > 1 and spend > 3", "position 20: unknown field 'spend'"),
        ("order_count > 1; DROP TABLE customers", "position 15: unexpected character ';'"),
        ("order_count > 1 -- comment", "position 16: unexpected character '-'"),
        ("(order_count > 1", "expected ')'"),
        ("order_count >", "expected a value"),
        ('tier > "gold"', "only numbers can be ordered"),
        ('order_count = "7"', "compares a number with a string"),
        ("order_count", "expected a condition"),
        ("order_count > 1 2", "unexpected '2'"),
        ("net_revenue between 1", "'and' in 'between"),
        ("has_tag(vip)", "has_tag takes one quoted tag name"),
        ("   ", "rule is empty"),
        ("order_count > 1 or", "expected a value"),
    ],
)
def test_errors_name_the_position_and_the_problem(rule: str, message: str) -> None:
    assert message in error_of(rule)


def test_deep_nesting_is_refused_quickly() -> None:
    assert f"deeper than {MAX_DEPTH}" in error_of("(" * 1_900 + "order_count > 1" + ")" * 1_900)
    assert f"deeper than {MAX_DEPTH}" in error_of("not " * 900 + "order_count > 1")
    assert matches("(" * MAX_DEPTH + "order_count > 1" + ")" * MAX_DEPTH, VIP)


def test_huge_rules_are_refused_and_long_flat_rules_are_fine() -> None:
    assert "at most" in error_of("order_count > 1 or " * 60_000 + "order_count > 1")  # about 1 MB
    flat = " or ".join(["order_count > 1"] * ((MAX_RULE_LENGTH - 20) // 19))
    assert matches(flat, VIP)


@given(st.text(max_size=300))
def test_any_text_is_a_rule_or_a_clear_error(text: str) -> None:
    try:
        parse_rule(text)
    except InvalidArgument as error:
        assert error.violations[0].field == "rule"
        assert error.violations[0].description.startswith("position ")


@given(
    st.lists(
        st.sampled_from(
            ["(", ")", "not", "and", "or", "order_count", ">", "1", '"x"', "in", ",", "between", "has_tag", "tier", "="]
        ),
        max_size=40,
    )
)
def test_token_soup_never_crashes(tokens: list[str]) -> None:
    try:
        node = parse_rule(" ".join(tokens))
    except InvalidArgument:
        return
    evaluate(node, VIP, frozenset())  # type: ignore[arg-type]


RULES = [
    "recency_days > 90",
    "order_count >= 2 and net_revenue between 10000 and 100000",
    'tier = "gold" or channel in ("app", "pos")',
    'channel not in ("app")',
    "not (recency_days <= 30)",
    'tier != "gold"',
    "probability_alive < 0.5",
    "not (probability_alive < 0.5)",
    'has_tag("高价值") and not has_tag("黑名单")',
    "order_count = 1 or recency_days < 0 and aov > 100",
    'not tier in ("gold", "silver") or has_tag("vip")',
    "1 = 1",
    "not (2 between 3 and 4)",
]
rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "recency_days": st.one_of(st.none(), st.integers(0, 400).map(float)),
            "order_count": st.one_of(st.none(), st.integers(0, 9).map(float)),
            "net_revenue": st.one_of(st.none(), st.integers(0, 200_000).map(float)),
            "aov": st.one_of(st.none(), st.integers(0, 500).map(float)),
            "probability_alive": st.one_of(st.none(), st.floats(0, 1)),
            "tier": st.one_of(st.none(), st.sampled_from(["gold", "silver", "basic"])),
            "channel": st.one_of(st.none(), st.sampled_from(["app", "pos", "h5"])),
            "tags": st.frozensets(st.sampled_from(["高价值", "黑名单", "vip"])),
        }
    ),
    min_size=1,
    max_size=40,
)


@given(rows_strategy)
def test_vectorised_evaluation_matches_row_by_row(rows: list[dict[str, object]]) -> None:
    import numpy as np

    from services.segmentation.rules import FIELDS, Columns, Kind, evaluate_columns

    values, present = {}, {}
    for name, kind in FIELDS.items():
        raw = [row.get(name) for row in rows]
        present[name] = np.array([v is not None for v in raw])
        if kind is Kind.NUMBER:
            values[name] = np.array([np.nan if v is None else v for v in raw], dtype=float)
        else:
            values[name] = np.array(["" if v is None else v for v in raw], dtype=object)
    tags = {t: np.array([t in row["tags"] for row in rows]) for t in ("高价值", "黑名单", "vip")}  # type: ignore[operator]
    columns = Columns(values, present, tags, len(rows))
    for rule in RULES:
        node = parse_rule(rule)
        expected = [evaluate(node, row, row["tags"]) for row in rows]  # type: ignore[arg-type]
        assert evaluate_columns(node, columns).tolist() == expected, rule
