"""Named problems clickwatch reports, and how serious each is by default."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType


class Severity(enum.StrEnum):
    """How much a finding matters: an error makes a run unhealthy."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class FindingKind(enum.StrEnum):
    """Every problem clickwatch can name."""

    CONSENT_VIOLATION = "consent_violation"
    CONSENT_UNKNOWN = "consent_unknown"
    MISSING_CONSENT_REFERENCE = "missing_consent_reference"
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID_PAYLOAD = "invalid_payload"
    DUPLICATE_EVENT = "duplicate_event"
    CORS_REJECTED = "cors_rejected"
    CONSENT_REFERENCE_FAILED = "consent_reference_failed"
    REPEATED_CONSENT_REFERENCE = "repeated_consent_reference"
    NO_EVENTS_AFTER_CONSENT = "no_events_after_consent"
    SLOW_DELIVERY = "slow_delivery"
    STALE_CONSENT_REFERENCE = "stale_consent_reference"
    EVENT_NOT_SENT = "event_not_sent"
    EVENT_WITHOUT_PUSH = "event_without_push"
    OBSERVER_BLOCKED = "observer_blocked"
    SERVICE_WORKER = "service_worker"
    UNREADABLE_MESSAGE = "unreadable_message"
    ACCOUNT_CONSENT_MISMATCH = "account_consent_mismatch"


DEFAULT_SEVERITY: Mapping[FindingKind, Severity] = MappingProxyType(
    {
        FindingKind.CONSENT_VIOLATION: Severity.ERROR,
        FindingKind.CONSENT_UNKNOWN: Severity.WARNING,
        # No public source confirms today's tag sends consent-reference on clickstream POSTs.
        FindingKind.MISSING_CONSENT_REFERENCE: Severity.WARNING,
        FindingKind.UNKNOWN_SCHEMA: Severity.ERROR,
        FindingKind.INVALID_PAYLOAD: Severity.ERROR,
        FindingKind.DUPLICATE_EVENT: Severity.WARNING,
        FindingKind.CORS_REJECTED: Severity.ERROR,
        FindingKind.CONSENT_REFERENCE_FAILED: Severity.ERROR,
        FindingKind.REPEATED_CONSENT_REFERENCE: Severity.WARNING,
        FindingKind.NO_EVENTS_AFTER_CONSENT: Severity.ERROR,
        FindingKind.SLOW_DELIVERY: Severity.WARNING,
        FindingKind.STALE_CONSENT_REFERENCE: Severity.WARNING,
        FindingKind.EVENT_NOT_SENT: Severity.ERROR,
        FindingKind.EVENT_WITHOUT_PUSH: Severity.INFO,
        FindingKind.OBSERVER_BLOCKED: Severity.INFO,
        # Nobody is accused: pages the worker serves from its cache are judged from the network, and the user is told.
        FindingKind.SERVICE_WORKER: Severity.INFO,
        # clickwatch could not read or judge a message: nobody is accused, but the delivery went unjudged.
        FindingKind.UNREADABLE_MESSAGE: Severity.WARNING,
        # The shopper consented in this browser; the account they signed in to holds no consent: a record to fix,
        # not tracking against the shopper's will (Spartacus transfers anonymous consent only at registration).
        FindingKind.ACCOUNT_CONSENT_MISMATCH: Severity.WARNING,
    }
)

# The longest text a finding, a consent signal or a note carries: a page of 50 findings stays small whatever was sent.
MAX_TEXT = 2000


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, cut to `limit` characters with a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… and {len(text) - limit} more characters"


def listed(items: Sequence[str], most: int, separator: str = ", ") -> str:
    """The first `most` items joined, with how many more there were."""
    shown = separator.join(items[:most])
    return f"{shown}… and {len(items) - most} more" if len(items) > most else shown


@dataclass(frozen=True, slots=True)
class Finding:
    """One named problem, tied to a visitor and, where there is one, to a delivery."""

    kind: FindingKind
    severity: Severity
    message: str
    visitor: str
    run: str
    at: float
    delivery_uid: str | None = None
