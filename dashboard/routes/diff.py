"""`GET /api/diff`: what changed in the tracking from one run to another of this store (core/diff.py).

Baseline files are the command line's business (`clickwatch diff FILE.json RUN`): the API never reads a path a
request names.
"""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from clickwatch.core.diff import (
    DEFAULT_FAIL_ON,
    DEFAULT_TOLERANCE,
    Diff,
    DiffUsageError,
    as_dict,
    check_tolerance,
    compare,
    parse_fail_on,
)
from clickwatch.dashboard.deps import ConnDep
from clickwatch.dashboard.models import NOT_FOUND, UNAVAILABLE, DiffReport
from clickwatch.store.diff import DEFAULT_SAMPLE, UnknownRun, profile_run

router = APIRouter(prefix="/api", tags=["api"])
MAX_API_SAMPLE = 1000  # bodies per schema a request may ask to read
SOURCE = "the dashboard's store"

# "default": the run of traffic whose proxy credentials name none.
RunQuery = Annotated[
    str,
    Query(min_length=1, max_length=200, description="run name", openapi_examples={"default": {"value": "default"}}),
]
ToleranceQuery = Annotated[
    float, Query(ge=0, le=1000, description="relative change of a count per visit that is reported (0.25 = 25 %)")
]
FailOnQuery = Annotated[
    str,
    Query(max_length=2000, description="what counts as a regression: changes, verdicts, severities or finding kinds"),
]
SampleQuery = Annotated[int, Query(ge=1, le=MAX_API_SAMPLE, description="bodies read per schema for payload fields")]


class DiffRequestError(ValueError):
    """A bad fail_on or tolerance (422), or an unknown run (404): the message says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def diff_runs(
    conn: sqlite3.Connection, base: str, new: str, tolerance: float, fail_on: str, sample: int = DEFAULT_SAMPLE
) -> Diff:
    """Compare two runs of the store; DiffRequestError for what the caller got wrong (the page shares this)."""
    try:
        tokens = parse_fail_on(fail_on)
        check_tolerance(tolerance)
    except DiffUsageError as exc:
        raise DiffRequestError(
            422, str(exc).replace("--fail-on", "fail_on").replace("--count-tolerance", "tolerance")
        ) from None
    try:
        return compare(
            profile_run(conn, base, SOURCE, sample), profile_run(conn, new, SOURCE, sample), tolerance, tokens
        )
    except UnknownRun as exc:
        raise DiffRequestError(404, str(exc)) from None


@router.get(
    "/diff",
    summary="What changed in the tracking from run `base` to run `new`, per schema",
    response_model=DiffReport,
    responses=NOT_FOUND | UNAVAILABLE,
)
def get_diff(
    conn: ConnDep,
    base: RunQuery,
    new: RunQuery,
    tolerance: ToleranceQuery = DEFAULT_TOLERANCE,
    fail_on: FailOnQuery = DEFAULT_FAIL_ON,
    sample: SampleQuery = DEFAULT_SAMPLE,
) -> dict[str, Any]:
    try:
        diff = diff_runs(conn, base, new, tolerance, fail_on, sample)
    except DiffRequestError as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    return as_dict(diff)
