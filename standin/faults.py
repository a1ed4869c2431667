"""The failure modes the stand-in can play, switchable at run time.

Tenant faults change how the tenant answers clickstream POSTs (or its CORS preflights); tag faults change
how the Profile Tag behaves, and reach the tag through its configuration (`/config/<id>`), so they take
effect from the next page load. One stand-in instance has one set of faults: runs that need different
faults at the same time use separate instances (they are cheap: threads and ephemeral ports).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class FaultName(enum.StrEnum):
    """Every fault, by the name used on the command line and in `POST /admin/faults`."""

    STATUS = "status"  # status:<code> - clickstream POSTs answered with that status
    HANG = "hang"  # clickstream POSTs never answered (until the stand-in stops or HANG_SECONDS pass)
    RESET = "reset"  # clickstream POSTs answered by a TCP reset
    SLOW = "slow"  # slow:<seconds> - clickstream POSTs answered 201 after that long
    CORS_NO_CONSENT_REFERENCE = "cors-no-consent-reference"  # preflights do not allow consent-reference
    TRACK_BEFORE_CONSENT = "track-before-consent"  # the tag ignores consent and tracks from the first page
    DUPLICATE_EVENTS = "duplicate-events"  # the tag sends every event twice
    NO_CONSENT_REFERENCE = "no-consent-reference"  # the tag omits the consent-reference header


TAG_FAULTS = frozenset({FaultName.TRACK_BEFORE_CONSENT, FaultName.DUPLICATE_EVENTS, FaultName.NO_CONSENT_REFERENCE})
HANG_SECONDS = 120.0
MAX_SLOW_SECONDS = 60.0
FAULT_HELP = (
    "status:<code>, hang, reset, slow:<seconds>, cors-no-consent-reference, track-before-consent, "
    "duplicate-events, no-consent-reference"
)


class FaultError(ValueError):
    """A fault spelled wrongly; the message says what is accepted."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and its argument (the status code, or the delay in seconds)."""

    name: FaultName
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        """'status:503', 'slow:2.5', 'hang', ... -> Fault; FaultError names the problem."""
        word, sep, argument = text.strip().partition(":")
        try:
            name = FaultName(word.strip().lower())
        except ValueError:
            raise FaultError(f"unknown fault {text!r} (known: {FAULT_HELP})") from None
        if name is FaultName.STATUS:
            if not argument.strip().isdigit() or not 100 <= int(argument) <= 599:
                raise FaultError(f"fault {text!r}: give an HTTP status 100-599, e.g. status:503")
            return cls(name, int(argument))
        if name is FaultName.SLOW:
            try:
                seconds = float(argument)
            except ValueError:
                raise FaultError(f"fault {text!r}: give the delay in seconds, e.g. slow:3") from None
            if not 0 < seconds <= MAX_SLOW_SECONDS:
                raise FaultError(f"fault {text!r}: the delay must be more than 0 and at most {MAX_SLOW_SECONDS:g} s")
            return cls(name, seconds)
        if sep:
            raise FaultError(f"fault {text!r}: {name.value} takes no argument")
        return cls(name)

    def __str__(self) -> str:
        if self.value is None:
            return self.name.value
        return f"{self.name.value}:{self.value:g}"


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults in force; empty means a healthy storefront, tag and tenant."""

    active: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Faults:
        """Several fault names -> Faults (a later fault of the same name replaces an earlier one)."""
        by_name = {f.name: f for f in (Fault.parse(t) for t in texts if t.strip())}
        return cls(tuple(by_name.values()))

    def get(self, name: FaultName) -> Fault | None:
        """The fault of that name, if it is on."""
        return next((f for f in self.active if f.name is name), None)

    def tag_behaviour(self) -> dict[str, bool]:
        """What the tag reads from its configuration."""
        return {
            "trackBeforeConsent": self.get(FaultName.TRACK_BEFORE_CONSENT) is not None,
            "duplicateEvents": self.get(FaultName.DUPLICATE_EVENTS) is not None,
            "omitConsentReference": self.get(FaultName.NO_CONSENT_REFERENCE) is not None,
        }

    def names(self) -> list[str]:
        """The faults as they are spelled on the command line."""
        return [str(f) for f in self.active]
