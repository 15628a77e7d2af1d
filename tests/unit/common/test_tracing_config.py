"""Which exporter the OTEL_* variables choose, and the traceparent round trip the outbox relies on."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExportResult

from services.common.tracing import (
    DiscardingExporter,
    Tracing,
    batching_provider,
    current_traceparent,
    exporter_from_env,
)


def test_the_named_exporter_is_built_and_an_unknown_name_is_refused() -> None:
    assert isinstance(exporter_from_env({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)
    discard = exporter_from_env({"OTEL_TRACES_EXPORTER": "discard"})
    assert isinstance(discard, DiscardingExporter)
    assert discard.export([]) is SpanExportResult.SUCCESS
    with pytest.raises(ValueError, match="zipkin"):
        exporter_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_a_stored_traceparent_continues_its_trace_and_an_empty_one_starts_a_new_trace() -> None:
    tracing = Tracing(batching_provider("test", DiscardingExporter()), "test")
    assert current_traceparent() == ""  # outside any span: nothing to store
    stored = tracing.root_traceparent("root", {"index": 0})
    version, trace_id, span_id, flags = stored.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1  # sampled
    with tracing.continued(stored, "relay", {}) as span:
        context = span.get_span_context()
        assert f"{context.trace_id:032x}" == trace_id
        assert current_traceparent().split("-")[1] == trace_id
    with tracing.continued("", "relay", {}) as span:
        assert f"{span.get_span_context().trace_id:032x}" != trace_id


def test_the_service_name_is_ours_unless_the_environment_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def name(env: dict[str, str]) -> object:
        return batching_provider("points", DiscardingExporter(), env).resource.attributes["service.name"]

    assert name({}) == "loyalty-points"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-points")  # the SDK reads its own variables from os.environ
    assert name({"OTEL_SERVICE_NAME": "shop-points"}) == "shop-points"
