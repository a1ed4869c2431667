"""Which HTTP answers count as delivered, and the verdict for an ended delivery."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from clickwatch.core.model import Kind, Verdict


class StatusSpecError(ValueError):
    """An expected-status setting cannot be understood."""


@dataclass(frozen=True, slots=True)
class StatusSet:
    """A set of HTTP statuses written as '201', '2xx', '200-204' or a comma list of those."""

    ranges: tuple[tuple[int, int], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> StatusSet:
        """Parse a status set, raising StatusSpecError with the offending part."""
        ranges: list[tuple[int, int]] = []
        for part in (p.strip().lower() for p in text.replace("|", ",").split(",")):
            if not part:
                continue
            if len(part) == 3 and part.endswith("xx") and part[0] in "12345":
                low = int(part[0]) * 100
                ranges.append((low, low + 99))
            elif "-" in part:
                a, _, b = part.partition("-")
                ranges.append((_status(a, text), _status(b, text)))
            else:
                code = _status(part, text)
                ranges.append((code, code))
        if not ranges:
            raise StatusSpecError(f"{text!r} names no HTTP status")
        return cls(tuple(ranges), text)

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(low <= status <= high for low, high in self.ranges)


def _status(part: str, whole: str) -> int:
    try:
        code = int(part.strip())
    except ValueError:
        raise StatusSpecError(
            f"{part.strip()!r} in {whole!r} is not an HTTP status (use e.g. 201, 2xx or 200-204)"
        ) from None
    if not 100 <= code <= 599:
        raise StatusSpecError(f"{code} in {whole!r} is outside the HTTP status range 100-599")
    return code


DEFAULT_EXPECTED: Mapping[Kind, StatusSet] = MappingProxyType(
    {
        Kind.CLICKSTREAM: StatusSet.parse("201"),
        Kind.CONSENT_REFERENCE: StatusSet.parse("201"),
        Kind.PREFLIGHT: StatusSet.parse("2xx"),
        # A cached tag script is revalidated with a conditional GET: 304 is a success too.
        Kind.TAG: StatusSet.parse("2xx,304"),
        Kind.STRATEGY: StatusSet.parse("2xx"),
    }
)


def parse_expected(spec: str, base: Mapping[Kind, StatusSet] = DEFAULT_EXPECTED) -> dict[Kind, StatusSet]:
    """Parse 'clickstream=201;tag=2xx,304' into expectations, merged over `base` (the defaults)."""
    expected = dict(base)
    for item in (i.strip() for i in spec.split(";")):
        if not item:
            continue
        name, sep, statuses = item.partition("=")
        if not sep:
            raise StatusSpecError(f"{item!r} should look like kind=statuses, e.g. clickstream=201")
        try:
            kind = Kind(name.strip())
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise StatusSpecError(f"{name.strip()!r} is not a delivery kind (one of {known})") from None
        expected[kind] = StatusSet.parse(statuses)
    return expected


def verdict_for(kind: Kind, status_code: int | None, expected: Mapping[Kind, StatusSet] = DEFAULT_EXPECTED) -> Verdict:
    """Delivered on an expected status, rejected on any other, failed without a response."""
    if status_code is None:
        return Verdict.FAILED
    return Verdict.DELIVERED if status_code in expected[kind] else Verdict.REJECTED
