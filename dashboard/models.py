"""The JSON API's response models: the contract `/openapi.json` publishes (field names, types, nullability).

Each model mirrors what `store/reader.py` returns, field for field and in the same order; a field is nullable
where its store column is. Models forbid fields they do not declare, so the schema says `additionalProperties:
false` and a field renamed on one side fails the API tests and the schemathesis run instead of slipping through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clickwatch.core.findings import FindingKind, Severity
from clickwatch.core.model import Kind, Verdict

Consent = Annotated[
    str | None,
    Field(
        description=(
            "given; absent (not given: never given); withdrawn (given, then taken back); paused; pending while its "
            "grace window runs; unknown; null: not judged"
        )
    ),
]


class Contract(BaseModel):
    """A response object: exactly the declared fields."""

    model_config = ConfigDict(extra="forbid")


class Health(Contract):
    status: Literal["ok"]
    version: str


class Problem(Contract):
    """An error answer (404, 422 from the app's own checks, 503)."""

    detail: str


class ItemFinding(Contract):
    """A finding as listed with its delivery."""

    kind: FindingKind
    severity: Severity
    message: str
    at: float


class DeliveryColumns(Contract):
    """What every view of a delivery carries: the columns it is listed by."""

    id: int
    run: str
    kind: Kind
    target_kind: Kind | None = Field(description="what a preflight was for")
    verdict: Verdict
    method: str
    url: str
    host: str | None
    schema_: str | None = Field(alias="schema", description="hybris-schema as sent")
    schema_name: str | None = Field(description="the schema's short name ('ProductView')")
    status_code: int | None
    duration_ms: float | None
    sent_at: float
    answered_at: float | None
    visitor: str
    client_addr: str | None
    consent: Consent
    consent_reference: str | None
    error: str | None
    seq: int = Field(description="change number: the stream's event id")
    pushed_at: float | None = Field(description="when the data-layer push it carries was made")


class DeliveryItem(DeliveryColumns):
    """A delivery as listed and streamed."""

    findings: list[ItemFinding]


class DeliveryPage(Contract):
    items: list[DeliveryItem]
    next: str | None = Field(description="cursor of the next page; null on the last")


class Body(Contract):
    kind: str | None = Field(description="empty, json, text or binary")
    text: str | None
    size: int | None
    truncated: bool
    note: str | None


class Message(Contract):
    """A request or a response: its headers (name, value) in order, and its body."""

    headers: list[tuple[str, str]]
    body: Body


class Delivery(DeliveryColumns):
    """One delivery in full."""

    path: str | None
    user_agent: str | None
    origin: str | None
    ended_at: float | None
    findings: list[ItemFinding]
    request: Message
    response: Message | None = Field(description="null when no answer came (see error)")


class Summary(Contract):
    healthy: bool
    deliveries: dict[str, int] = Field(description="by verdict")
    findings: dict[str, int] = Field(description="by finding kind")
    severities: dict[str, int]
    last_delivered_at: float | None
    pending_decisions: int = Field(description="decisions still waiting on a window")
    oldest_pending_at: float | None = Field(
        default=None, description="when the oldest delivery still without an answer was sent (null: none)"
    )


class Finding(Contract):
    """A finding as listed: about a delivery (`delivery_id`, `url`, `schema_name`) or about a visitor."""

    id: int
    run: str
    kind: FindingKind
    severity: Severity
    message: str
    at: float
    visitor: str
    delivery_id: int | None
    url: str | None
    schema_name: str | None


class FindingList(Contract):
    items: list[Finding]


class Visitor(Contract):
    """A browser (client address plus User-Agent) in one run."""

    run: str
    visitor: str
    client_addr: str | None
    user_agent: str | None
    first_seen: float | None
    last_seen: float | None
    page_loads: int | None
    last_page_at: float | None
    consent: Consent
    consent_since: float | None
    pending_decision: str | None = Field(description="what is still being decided, if anything")


class VisitorList(Contract):
    items: list[Visitor]


class RunList(Contract):
    items: list[str] = Field(description="run names, sorted")
    more: bool = Field(description="whether the store holds more runs than listed")


class ConsentEvent(Contract):
    type: Literal["consent"]
    run: str
    at: float
    state: str
    source: str
    detail: str | None


class _TimelineHead(Contract):
    type: Literal["delivery"]
    at: float = Field(description="the delivery's sent_at")


class DeliveryEvent(DeliveryItem, _TimelineHead):
    """A delivery in a visitor's timeline."""


class FindingEvent(Contract):
    """A finding about the visitor rather than one delivery."""

    type: Literal["finding"]
    run: str
    kind: FindingKind
    severity: Severity
    message: str
    at: float


class Push(Contract):
    """What the data-layer observer saw in a page."""

    id: int
    run: str
    page: str | None
    at: float
    type: str = Field(description="page, push, reference or navigation")
    name: str | None
    schema_name: str | None = Field(description="the clickstream schema the tag should send for it")
    consent: Consent
    data: Any = Field(description="parsed JSON; a navigation's URL")
    early: bool
    truncated: bool
    delivery_uid: str | None
    delivery_id: int | None
    outcome: Literal["sent", "not_sent", "unmatched", "withheld"] | None


class Timeline(Contract):
    visitor: str
    visits: list[Visitor]
    timeline: list[Annotated[ConsentEvent | DeliveryEvent | FindingEvent, Field(discriminator="type")]]
    pushes: list[Push]


class FunnelStep(Contract):
    schema_: str = Field(alias="schema")
    pushed: int
    pushed_with_consent: int
    sent: int
    delivered: int


class Funnel(Contract):
    run: str | None
    schemas: list[FunnelStep]


class Reset(Contract):
    removed: int
    run: str | None


DiffChangeName = Literal[
    "schema_missing", "schema_added", "count_down", "count_up", "field_missing", "field_added", "field_type_changed",
    "new_finding", "verdict_worse",
]  # fmt: skip


class DiffSide(Contract):
    """One run's clickstream events of a schema."""

    sent: int
    per_visit: float = Field(description="events sent per visit (per run when the run saw no visitor)")
    verdicts: dict[str, int]
    findings: dict[str, int] = Field(description="by finding kind")
    bodies_sampled: int
    json_bodies: int = Field(description="sampled bodies that were JSON, read for fields")
    fields: int = Field(description="field paths seen in those bodies")


class DiffChange(Contract):
    """One difference between BASE and NEW."""

    change: DiffChangeName
    schema_: str | None = Field(alias="schema", description="null: about the run, not one schema")
    detail: str
    field: str | None = Field(description="a payload field's path, e.g. data.products[].code")
    base: str | None
    new: str | None
    about: str | None = Field(description="the verdict or finding kind the change concerns")
    severity: Severity | None
    regression: bool = Field(description="counted by fail_on")


class DiffRow(Contract):
    """A schema (or, with schema null, the rest of the run: visitors and other calls) in BASE and NEW."""

    schema_: str | None = Field(alias="schema")
    base: DiffSide | None = Field(description="null: BASE sent none")
    new: DiffSide | None = Field(description="null: NEW sent none")
    changes: list[DiffChange]


class DiffRun(Contract):
    run: str
    source: str
    visits: int
    sample: int = Field(description="at most this many bodies per schema were read for fields")
    scan_capped: bool = Field(description="only the run's first events were looked at for bodies")
    run_findings: dict[str, int] = Field(description="findings about no clickstream event, by kind")


class DiffReport(Contract):
    """What changed in the tracking from BASE to NEW, per schema."""

    base: DiffRun
    new: DiffRun
    tolerance: float
    fail_on: list[str]
    regressed: bool
    regressions: int
    schemas: list[DiffRow]


def problem(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """An error answer for a route's `responses=`: JSON `{"detail": ...}` whatever the route's own media type."""
    schema = Problem.model_json_schema()
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


NOT_FOUND = problem(404, "No such item")
UNAVAILABLE = problem(503, "The store cannot be read")
