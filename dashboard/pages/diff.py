"""The diff page: what changed in the tracking from one run to another, per schema (the table `clickwatch diff`
prints; the comparison is core/diff.py's, read through the same function as `GET /api/diff`)."""

from __future__ import annotations

import math
import sqlite3
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from clickwatch.core.diff import DEFAULT_FAIL_ON, DEFAULT_TOLERANCE, Diff, SchemaProfile, per_visit
from clickwatch.dashboard.deps import SettingsDep
from clickwatch.dashboard.pages.common import page, with_store
from clickwatch.dashboard.routes.diff import DiffRequestError, diff_runs
from clickwatch.store.diff import known_runs

router = APIRouter(include_in_schema=False)
MAX_RUNS_OFFERED = 200


def _per_visit(found: SchemaProfile | None, visits: int) -> str:
    return "—" if found is None or found.sent == 0 else f"{per_visit(found, visits):.2f}"


def diff_rows(diff: Diff) -> list[dict[str, Any]]:
    """The table's rows: schema, each side's events per visit, the changes (regressions first)."""
    return [
        {
            "schema": name,
            "base": _per_visit(base, diff.base.visits),
            "new": _per_visit(new, diff.new.visits),
            "changes": sorted(changes, key=lambda c: not c.regression),
            "regressed": any(c.regression for c in changes),
        }
        for name, base, new, changes in diff.rows()
    ]


def _tolerance(text: str | None) -> float | str:
    """The tolerance field's value, or what is wrong with it."""
    if not text:
        return DEFAULT_TOLERANCE
    try:
        value = float(text)
    except ValueError:
        return f"tolerance: {text!r} is not a number (0.25 = 25 %)"
    return value if math.isfinite(value) else f"tolerance: {text!r} is not a number (0.25 = 25 %)"


@router.get("/diff")
def diff_page(
    request: Request,
    settings: SettingsDep,
    base: Annotated[str | None, Query(max_length=200)] = None,
    new: Annotated[str | None, Query(max_length=200)] = None,
    tolerance: Annotated[str | None, Query(max_length=32)] = None,
    fail_on: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Two runs side by side: schemas dropped or added, counts per visit, payload fields, findings, verdicts."""

    def build(conn: sqlite3.Connection) -> Response:
        context: dict[str, Any] = {
            "base": base or "",
            "new": new or "",
            "tolerance": tolerance or f"{DEFAULT_TOLERANCE:g}",
            "fail_on": fail_on or DEFAULT_FAIL_ON,
            "runs": known_runs(conn, MAX_RUNS_OFFERED),
            "diff": None,
            "rows": [],
            "error": None,
        }
        if not (base and new):
            return page(request, "diff.html", context)
        limit = _tolerance(tolerance)
        try:
            if isinstance(limit, str):
                raise DiffRequestError(422, limit)
            diff = diff_runs(conn, base, new, limit, fail_on or DEFAULT_FAIL_ON)
        except DiffRequestError as exc:
            return page(request, "diff.html", {**context, "error": str(exc)}, status_code=exc.status)
        return page(request, "diff.html", {**context, "diff": diff, "rows": diff_rows(diff)})

    return with_store(request, settings, build)
