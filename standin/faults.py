"""The failure modes the stand-in can play, switchable at run time.

Tenant faults change how the tenant answers clickstream POSTs (or its CORS preflights); tag faults change
how the Profile Tag behaves, and reach the tag through its configuration (`/config/<id>`); storefront faults
change the storefront's own script and reach it through the page's settings. Tag and storefront faults take
effect from the next page load. One stand-in instance has one set of faults: runs that need different faults
at the same time use separate instances (they are cheap: threads and ephemeral ports).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass


class FaultName(enum.StrEnum):
    """Every fault, by the name used on the command line and in `POST /admin/faults`."""

    STATUS = "status"  # status:<code> - clickstream POSTs answered with that status
    HANG = "hang"  # clickstream POSTs never answered (until the stand-in stops or HANG_SECONDS pass)
    RESET = "reset"  # clickstream POSTs answered by a TCP reset
    SLOW = "slow"  # slow:<seconds> - clickstream POSTs answered 201 after that long
    SLOW_REFERENCE = "slow-reference"  # slow-reference:<seconds> - consent-reference calls answered 201 that late
    CORS_NO_CONSENT_REFERENCE = "cors-no-consent-reference"  # preflights do not allow consent-reference
    TRACK_BEFORE_CONSENT = "track-before-consent"  # the tag ignores consent and tracks from the first page
    # The tag tracks from the first page until the shopper decides (it takes "no decision yet" for consent), then
    # follows consent: a shopper who accepts a few seconds later was tracked before consent.
    EARLY_TRACKING = "early-tracking"
    DUPLICATE_EVENTS = "duplicate-events"  # the tag sends every event twice
    NO_CONSENT_REFERENCE = "no-consent-reference"  # the tag omits the consent-reference header
    DROP_EVENT = "drop-event"  # drop-event:<Name>[,<Name>...] - the tag silently never sends those pushes
    EXTRA_FIELD = "extra-field"  # extra-field:<field>[,<field>...] - the tag adds those fields to every event's body
    # The storefront keeps sending the old consent reference (X-Consent-Reference on OCC calls, consent-reference on
    # strategy calls) after a withdrawal, until the next full page load or a new reference: Spartacus bug 14105.
    STALE_REFERENCE = "stale-reference"
    # Spartacus style: the shopper's account holds no PROFILE consent when they sign in (Spartacus transfers the
    # anonymous consent to the account only at registration), and the storefront keeps pushing events on the
    # anonymous consent.
    ACCOUNT_WITHOUT_CONSENT = "account-without-consent"


TAG_FAULTS = frozenset(
    {
        FaultName.TRACK_BEFORE_CONSENT,
        FaultName.EARLY_TRACKING,
        FaultName.DUPLICATE_EVENTS,
        FaultName.NO_CONSENT_REFERENCE,
        FaultName.DROP_EVENT,
        FaultName.EXTRA_FIELD,
    }
)
# What an extra-field fault puts in each field it adds.
EXTRA_FIELD_VALUE = "stand-in"
STOREFRONT_FAULTS = frozenset({FaultName.STALE_REFERENCE, FaultName.ACCOUNT_WITHOUT_CONSENT})
# Data-layer names the tag sends (its schema map in static/profile-tag.js; a test keeps the two in step).
TRACKED_EVENTS = (
    "ProductDetailsPageViewed",
    "CategoryPageViewed",
    "KeywordSearch",
    "AddedToCart",
    "ModifiedCart",
    "RemovedFromCart",
    "CartSnapshot",
    "OrderConfirmationPageViewed",
    "CarouselViewed",
    "CarouselClicked",
)
HANG_SECONDS = 120.0
MAX_SLOW_SECONDS = 60.0
FAULT_HELP = (
    "status:<code>, hang, reset, slow:<seconds>, slow-reference:<seconds>, cors-no-consent-reference, "
    "track-before-consent, early-tracking, duplicate-events, no-consent-reference, drop-event:<Name>[,<Name>...], "
    "stale-reference, account-without-consent, extra-field:<field>[,<field>...]"
)
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class FaultError(ValueError):
    """A fault spelled wrongly; the message says what is accepted."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and its argument: a number (the status code, the delay in seconds) or text (event names)."""

    name: FaultName
    value: float | None = None
    text: str | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        """'status:503', 'slow:2.5', 'drop-event:AddedToCart', 'hang', ... -> Fault; FaultError names the problem."""
        word, sep, argument = text.strip().partition(":")
        try:
            name = FaultName(word.strip().lower())
        except ValueError:
            raise FaultError(f"unknown fault {text!r} (known: {FAULT_HELP})") from None
        if name is FaultName.STATUS:
            if not argument.strip().isdigit() or not 100 <= int(argument) <= 599:
                raise FaultError(f"fault {text!r}: give an HTTP status 100-599, e.g. status:503")
            return cls(name, int(argument))
        if name in (FaultName.SLOW, FaultName.SLOW_REFERENCE):
            try:
                seconds = float(argument)
            except ValueError:
                raise FaultError(f"fault {text!r}: give the delay in seconds, e.g. {name.value}:3") from None
            if not 0 < seconds <= MAX_SLOW_SECONDS:
                raise FaultError(f"fault {text!r}: the delay must be more than 0 and at most {MAX_SLOW_SECONDS:g} s")
            return cls(name, seconds)
        if name is FaultName.DROP_EVENT:
            return cls(name, text=_event_names(text, argument))
        if name is FaultName.EXTRA_FIELD:
            return cls(name, text=_field_names(text, argument))
        if sep:
            raise FaultError(f"fault {text!r}: {name.value} takes no argument")
        return cls(name)

    @property
    def events(self) -> tuple[str, ...]:
        """The data-layer names a drop-event fault names (none for other faults)."""
        return tuple(self.text.split(",")) if self.name is FaultName.DROP_EVENT and self.text else ()

    @property
    def fields(self) -> tuple[str, ...]:
        """The body fields an extra-field fault adds (none for other faults)."""
        return tuple(self.text.split(",")) if self.name is FaultName.EXTRA_FIELD and self.text else ()

    def __str__(self) -> str:
        if self.text is not None:
            return f"{self.name.value}:{self.text}"
        if self.value is None:
            return self.name.value
        return f"{self.name.value}:{self.value:g}"


def _event_names(text: str, argument: str) -> str:
    """drop-event's argument, checked and normalised: data-layer names the tag sends, comma-separated, once each."""
    names = list(dict.fromkeys(n.strip() for n in argument.split(",") if n.strip()))
    if not names or not all(_EVENT_NAME.fullmatch(n) for n in names):
        raise FaultError(
            f"fault {text!r}: give data-layer event names, e.g. drop-event:AddedToCart "
            "(several: drop-event:AddedToCart,CartSnapshot)"
        )
    unknown = [n for n in names if n not in TRACKED_EVENTS]
    if unknown:
        known = ", ".join(TRACKED_EVENTS)
        raise FaultError(f"fault {text!r}: the tag never sends {', '.join(unknown)} (it sends {known})")
    return ",".join(names)


def _field_names(text: str, argument: str) -> str:
    """extra-field's argument, checked and normalised: plain JSON key names, comma-separated, once each."""
    names = list(dict.fromkeys(n.strip() for n in argument.split(",") if n.strip()))
    if not names or not all(_EVENT_NAME.fullmatch(n) for n in names):
        raise FaultError(
            f"fault {text!r}: give field names, e.g. extra-field:debugInfo (several: extra-field:debugInfo,variant)"
        )
    return ",".join(names)


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults in force; empty means a healthy storefront, tag and tenant."""

    active: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Faults:
        """Several fault names -> Faults.

        A later fault of the same name replaces an earlier one, except drop-event and extra-field: each one names
        events (fields) of its own, and together they drop (add) all of them.
        """
        by_key: dict[tuple[FaultName, str | None], Fault] = {}
        for fault in (Fault.parse(t) for t in texts if t.strip()):
            named = fault.name in (FaultName.DROP_EVENT, FaultName.EXTRA_FIELD)
            by_key[(fault.name, fault.text if named else None)] = fault
        return cls(tuple(by_key.values()))

    def get(self, name: FaultName) -> Fault | None:
        """The (first) fault of that name, if it is on."""
        return next((f for f in self.active if f.name is name), None)

    def dropped_events(self) -> list[str]:
        """The data-layer names the tag must not send (from every drop-event fault), in the order given."""
        return list(dict.fromkeys(name for f in self.active for name in f.events))

    def extra_fields(self) -> list[str]:
        """The fields the tag adds to every event body (from every extra-field fault), in the order given."""
        return list(dict.fromkeys(name for f in self.active for name in f.fields))

    def tag_behaviour(self) -> dict[str, bool | list[str]]:
        """What the tag reads from its configuration (`extraFields` only while an extra-field fault is on)."""
        behaviour: dict[str, bool | list[str]] = {
            "trackBeforeConsent": self.get(FaultName.TRACK_BEFORE_CONSENT) is not None,
            "earlyTracking": self.get(FaultName.EARLY_TRACKING) is not None,
            "duplicateEvents": self.get(FaultName.DUPLICATE_EVENTS) is not None,
            "omitConsentReference": self.get(FaultName.NO_CONSENT_REFERENCE) is not None,
            "dropEvents": self.dropped_events(),
        }
        if self.extra_fields():
            behaviour["extraFields"] = self.extra_fields()
        return behaviour

    def storefront_behaviour(self) -> dict[str, bool]:
        """What the storefront's script reads from the page's settings."""
        return {"staleReference": self.get(FaultName.STALE_REFERENCE) is not None}

    def names(self) -> list[str]:
        """The faults as they are spelled on the command line."""
        return [str(f) for f in self.active]
