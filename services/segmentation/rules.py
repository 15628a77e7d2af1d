"""The segment rule language: a small, safe expression language over customer features and tags.

Grammar (keywords are case-insensitive):

    rule       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := value (("=" | "!=" | "<" | "<=" | ">" | ">=") value
                         | "between" value "and" value
                         | ["not"] "in" "(" value ("," value)* ")")?
    value      := NUMBER | STRING | FIELD | "has_tag" "(" STRING ")" | "(" or ")"

Examples: `recency_days > 90 and order_count >= 2`,
`channel in ("mini_program", "h5") and not has_tag("黑名单")`,
`net_revenue between 10000 and 50000 or tier = "gold"`.

Parsing never evaluates anything; a rule is checked against the known fields
and their types when it is created, and every error names its position. Input
is limited in length and nesting, and parsing is linear in the rule's length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from services.common.errors import FieldViolation, InvalidArgument

MAX_RULE_LENGTH = 4000
MAX_DEPTH = 32


class Kind(Enum):
    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"


# Fields a rule may use and their kinds; the segmentation service supplies these per customer.
FIELDS: dict[str, Kind] = {
    "recency_days": Kind.NUMBER,
    "order_count": Kind.NUMBER,
    "purchase_days": Kind.NUMBER,
    "net_revenue": Kind.NUMBER,
    "aov": Kind.NUMBER,
    "mean_interval_days": Kind.NUMBER,
    "probability_alive": Kind.NUMBER,
    "points_balance": Kind.NUMBER,
    "orders_in_window": Kind.NUMBER,
    "active_days_in_window": Kind.NUMBER,
    "revenue_in_window": Kind.NUMBER,
    "age_days": Kind.NUMBER,
    "birthday_month": Kind.NUMBER,
    "registered_days": Kind.NUMBER,
    "tier": Kind.STRING,
    "channel": Kind.STRING,
    "rfm_segment": Kind.STRING,
    "value_class": Kind.STRING,
    "activity_layer": Kind.STRING,
    "churn_risk": Kind.STRING,
}

Value = float | str | bool | None


# -- syntax tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: float | str
    position: int


@dataclass(frozen=True)
class Field:
    name: str
    position: int


@dataclass(frozen=True)
class HasTag:
    tag: str
    position: int


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node
    position: int


@dataclass(frozen=True)
class Between:
    subject: Node
    low: Node
    high: Node
    position: int


@dataclass(frozen=True)
class In:
    subject: Node
    options: tuple[Node, ...]
    negated: bool
    position: int


@dataclass(frozen=True)
class Not:
    operand: Node
    position: int


@dataclass(frozen=True)
class Logical:
    op: str  # "and" | "or"
    operands: tuple[Node, ...]
    position: int


Node = Literal | Field | HasTag | Compare | Between | In | Not | Logical


# -- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|!=|=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "between", "in", "has_tag"}


@dataclass(frozen=True)
class Token:
    kind: str  # number | string | op | word | keyword | end
    text: str
    position: int


def _error(position: int, message: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("rule", f"position {position}: {message}")], reason="BAD_RULE")


def tokenize(rule: str) -> list[Token]:
    if len(rule) > MAX_RULE_LENGTH:
        raise _error(MAX_RULE_LENGTH, f"a rule may be at most {MAX_RULE_LENGTH} characters")
    tokens: list[Token] = []
    position = 0
    while True:
        while position < len(rule) and rule[position].isspace():
            position += 1
        if position == len(rule):
            tokens.append(Token("end", "", position))
            return tokens
        match = _TOKEN.match(rule, position)
        if match is None or match.end() == position:
            raise _error(position, f"unexpected character {rule[position]!r}")
        kind = match.lastgroup or ""
        text = match.group(kind)
        start = match.start(kind)
        if kind == "word" and text.lower() in _KEYWORDS:
            kind, text = "keyword", text.lower()
        tokens.append(Token(kind, text, start))
        position = match.end()


# -- parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.current
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def expect(self, kind: str, text: str, what: str) -> Token:
        token = self.accept(kind, text)
        if token is None:
            found = self.current.text or "the end of the rule"
            raise _error(self.current.position, f"expected {what}, found {found!r}")
        return token

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.current.position, f"rule is nested deeper than {MAX_DEPTH} levels")

    def parse(self) -> Node:
        node = self.or_()
        if self.current.kind != "end":
            raise _error(self.current.position, f"unexpected {self.current.text!r} after a complete rule")
        return node

    def or_(self) -> Node:
        start = self.current.position
        operands = [self.and_()]
        while self.accept("keyword", "or"):
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else Logical("or", tuple(operands), start)

    def and_(self) -> Node:
        start = self.current.position
        operands = [self.not_()]
        while self.accept("keyword", "and"):
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else Logical("and", tuple(operands), start)

    def not_(self) -> Node:
        token = self.accept("keyword", "not")
        if token is None:
            return self.comparison()
        self.nested()
        operand = self.not_()
        self.depth -= 1
        return Not(operand, token.position)

    def comparison(self) -> Node:
        left = self.value()
        start = self.current.position
        if self.current.kind == "op" and self.current.text in ("=", "!=", "<", "<=", ">", ">="):
            op = self.current.text
            self.index += 1
            return Compare(op, left, self.value(), start)
        if self.accept("keyword", "between"):
            low = self.value()
            self.expect("keyword", "and", "'and' in 'between ... and ...'")
            return Between(left, low, self.value(), start)
        negated = False
        if self.current.kind == "keyword" and self.current.text == "not" and self.tokens[self.index + 1].text == "in":
            self.index += 1
            negated = True
        if self.accept("keyword", "in"):
            self.expect("op", "(", "'(' after 'in'")
            options = [self.value()]
            while self.accept("op", ","):
                options.append(self.value())
            self.expect("op", ")", "')' to close the 'in' list")
            return In(left, tuple(options), negated, start)
        return left

    def value(self) -> Node:
        token = self.current
        if self.accept("number"):
            return Literal(float(token.text), token.position)
        if self.accept("string"):
            return Literal(_unquote(token.text), token.position)
        if self.accept("keyword", "has_tag"):
            self.expect("op", "(", "'(' after has_tag")
            tag = self.current
            if not self.accept("string"):
                raise _error(tag.position, "has_tag takes one quoted tag name")
            self.expect("op", ")", "')' after the tag name")
            return HasTag(_unquote(tag.text), token.position)
        if self.accept("word"):
            return Field(token.text, token.position)
        if self.accept("op", "("):
            self.nested()
            inner = self.or_()
            self.depth -= 1
            self.expect("op", ")", "')'")
            return inner
        found = token.text or "the end of the rule"
        raise _error(token.position, f"expected a value, field or '(', found {found!r}")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


# -- checking and evaluation ---------------------------------------------------------------


def _kind(node: Node, fields: Mapping[str, Kind]) -> Kind:
    if isinstance(node, Literal):
        return Kind.NUMBER if isinstance(node.value, float) else Kind.STRING
    if isinstance(node, Field):
        if node.name not in fields:
            raise _error(node.position, f"unknown field {node.name!r}; known fields: {', '.join(sorted(fields))}")
        return fields[node.name]
    if isinstance(node, HasTag | Not | Logical | Compare | Between | In):
        _check(node, fields)
        return Kind.BOOLEAN
    raise AssertionError(node)


def _check(node: Node, fields: Mapping[str, Kind]) -> None:
    if isinstance(node, Compare | Between | In):
        subject = node.left if isinstance(node, Compare) else node.subject
        others = (
            [node.right]
            if isinstance(node, Compare)
            else [node.low, node.high]
            if isinstance(node, Between)
            else list(node.options)
        )
        kind = _kind(subject, fields)
        for other in others:
            if _kind(other, fields) is not kind:
                raise _error(node.position, f"compares a {kind.value} with a {_kind(other, fields).value}")
        if kind is not Kind.NUMBER and (
            isinstance(node, Between) or (isinstance(node, Compare) and node.op not in ("=", "!="))
        ):
            raise _error(node.position, f"only numbers can be ordered; this compares {kind.value}s")
    elif isinstance(node, Not):
        _expect_boolean(node.operand, fields)
    elif isinstance(node, Logical):
        for operand in node.operands:
            _expect_boolean(operand, fields)


def _expect_boolean(node: Node, fields: Mapping[str, Kind]) -> None:
    if _kind(node, fields) is not Kind.BOOLEAN:
        raise _error(getattr(node, "position", 0), "expected a condition, found a bare value")


def parse_rule(rule: str, fields: Mapping[str, Kind] = FIELDS) -> Node:
    """The checked syntax tree of a rule, or INVALID_ARGUMENT naming the position and the problem."""
    if not rule.strip():
        raise _error(0, "rule is empty")
    node = _Parser(tokenize(rule)).parse()
    _expect_boolean(node, fields)
    return node


def evaluate(node: Node, row: Mapping[str, Value], tags: frozenset[str]) -> bool:
    """Whether a customer matches; a missing value (None) makes its comparison false."""
    result = _evaluate(node, row, tags)
    return bool(result)


def _evaluate(node: Node, row: Mapping[str, Value], tags: frozenset[str]) -> Value:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Field):
        return row.get(node.name)
    if isinstance(node, HasTag):
        return node.tag in tags
    if isinstance(node, Not):
        return not _evaluate(node.operand, row, tags)
    if isinstance(node, Logical):
        if node.op == "and":
            return all(_evaluate(o, row, tags) for o in node.operands)
        return any(_evaluate(o, row, tags) for o in node.operands)
    if isinstance(node, Compare):
        left, right = _evaluate(node.left, row, tags), _evaluate(node.right, row, tags)
        if left is None or right is None:
            return False
        return _COMPARE[node.op](left, right)
    if isinstance(node, Between):
        subject = _evaluate(node.subject, row, tags)
        low, high = _evaluate(node.low, row, tags), _evaluate(node.high, row, tags)
        if subject is None or low is None or high is None:
            return False
        return bool(low <= subject <= high)  # type: ignore[operator]
    subject = _evaluate(node.subject, row, tags)
    if subject is None:
        return False
    found = any(subject == _evaluate(o, row, tags) for o in node.options)
    return not found if node.negated else found


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


# -- vectorised evaluation -----------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Features of many customers: one array per field, plus which rows have a value and their tags."""

    values: Mapping[str, Any]  # field -> numpy array (float64 for numbers, object for strings)
    present: Mapping[str, Any]  # field -> bool array
    tags: Mapping[str, Any]  # tag -> bool array
    rows: int


def evaluate_columns(node: Node, columns: Columns) -> Any:
    """A boolean numpy mask: which customers match. Same meaning as `evaluate`, row for row."""
    import numpy as np

    def value(n: Node) -> tuple[Any, Any]:
        """(values, present) of a value node."""
        if isinstance(n, Literal):
            return n.value, True  # a scalar broadcasts: no array per literal
        if isinstance(n, Field):
            return columns.values[n.name], columns.present[n.name]
        return condition(n), True

    def condition(n: Node) -> Any:
        if isinstance(n, HasTag):
            return columns.tags.get(n.tag, np.zeros(columns.rows, dtype=bool))
        if isinstance(n, Not):
            return ~condition(n.operand)
        if isinstance(n, Logical):
            masks = [condition(o) for o in n.operands]
            combined = masks[0].copy()
            for mask in masks[1:]:
                combined = combined & mask if n.op == "and" else combined | mask
            return combined
        if isinstance(n, Compare):
            (left, lp), (right, rp) = value(n.left), value(n.right)
            return np.asarray(_COMPARE[n.op](left, right), dtype=bool) & lp & rp
        if isinstance(n, Between):
            (subject, sp), (low, lp), (high, hp) = value(n.subject), value(n.low), value(n.high)
            return np.asarray((low <= subject) & (subject <= high), dtype=bool) & sp & lp & hp
        if isinstance(n, In):
            subject, sp = value(n.subject)
            found = np.zeros(columns.rows, dtype=bool)
            for option in n.options:
                other, op = value(option)
                found |= np.asarray(subject == other, dtype=bool) & op
            return (~found if n.negated else found) & sp
        raise AssertionError(f"not a condition: {n}")

    # A rule of literals only (`1 = 1`) yields one value: give every customer the answer.
    return np.broadcast_to(np.asarray(condition(node), dtype=bool), (columns.rows,)).copy()
