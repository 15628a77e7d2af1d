"""Member attributes as rules see them: birthday month, days since registration on as_of, channel."""

from __future__ import annotations

from datetime import date

from services.segmentation.evaluation import Attributes, FeatureRow, attribute_values, customer_scores, members
from services.segmentation.rules import parse_rule

AS_OF = date(2026, 11, 23)


def row(customer_id: str) -> FeatureRow:
    return FeatureRow(customer_id, 2, 2, 10_000, 5_000.0, 10, 100, 45.0, 0.8)


def test_registered_days_count_to_as_of_and_are_unknown_before_registration_or_without_a_day() -> None:
    joined = Attributes(registered_on=date(2026, 11, 1))
    assert attribute_values(joined, AS_OF) == (None, 22.0, None)
    assert attribute_values(joined, date(2026, 10, 31)) == (None, None, None)
    assert attribute_values(joined, None) == (None, None, None)
    assert attribute_values(None, AS_OF) == (None, None, None)
    assert attribute_values(Attributes(birthday_month=11, channel="h5"), AS_OF) == (11.0, None, "h5")


def test_rules_on_attributes_select_exactly_the_members_that_have_them() -> None:
    rows = [row("a"), row("b"), row("c"), row("d")]
    attributes = {
        "a": Attributes(11, date(2026, 11, 20), "mini_program"),
        "b": Attributes(12, date(2025, 1, 1), "h5"),
        "c": Attributes(None, None, None),  # all unknown, like "d" which has no row at all
    }
    rules = {
        "november_birthdays": parse_rule("birthday_month = 11"),
        "newcomers": parse_rule("registered_days < 30"),
        "veterans": parse_rule("registered_days >= 365"),
        "mini_program": parse_rule('channel in ("mini_program", "app")'),
        "not_h5": parse_rule('not channel = "h5"'),
        "known_and_not_h5": parse_rule('channel != "h5"'),
    }
    result = members(rules, rows, customer_scores(rows), {}, attributes, AS_OF)
    assert result["november_birthdays"] == ["a"]
    assert result["newcomers"] == ["a"]
    assert result["veterans"] == ["b"]
    assert result["mini_program"] == ["a"]
    # An unknown value makes its comparison false (documented), so `not` of it is true,
    # while `!=` asks for a known, different value.
    assert result["not_h5"] == ["a", "c", "d"]
    assert result["known_and_not_h5"] == ["a"]
