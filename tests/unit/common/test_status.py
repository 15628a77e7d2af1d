"""Domain errors become statuses with ErrorInfo and BadRequest details; bugs never leak."""

from __future__ import annotations

import grpc
import sqlalchemy.exc
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from services.common.interceptors import classify
from services.common.status import internal_status, to_status


def details_of(status: grpc.Status) -> status_pb2.Status:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status")


def test_invalid_argument_lists_every_violation() -> None:
    status = to_status(InvalidArgument([FieldViolation("a", "bad"), FieldViolation("b", "worse")]))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert details_of(status).details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("a", "bad"), ("b", "worse")]


def test_reason_and_metadata_travel_in_error_info() -> None:
    status = to_status(FailedPrecondition("no", reason="INSUFFICIENT_BALANCE", metadata={"balance": "3"}))
    info = error_details_pb2.ErrorInfo()
    assert details_of(status).details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("INSUFFICIENT_BALANCE", {"balance": "3"})


def test_internal_status_says_only_the_incident() -> None:
    status = internal_status("abc123")
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "internal error (incident abc123)"


def test_lost_database_is_unavailable_and_bugs_are_not_classified() -> None:
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert isinstance(classify(lost), Unavailable)
    assert classify(KeyError("bug")) is None
