"""The live bench's viewers find final deliveries with bytes.find: the same ones as json.loads of every event."""

from __future__ import annotations

import json
import random
from typing import Any

from bench.live_bench import final_tokens
from clickwatch.dashboard.feed import change, totals_frame

VERDICTS = ("pending", "delivered", "rejected", "failed")


def item(n: int, rng: random.Random) -> dict[str, Any]:
    reference = rng.choice([f"lb-{n}", None, f"cr-{n}", "lb-", "lb-12x", f'lb-{n}"'])
    hostile = '"verdict":"delivered","consent_reference":"lb-999999"\n\n'  # inside a string: escaped, not a match
    return {
        "id": n,
        "run": "default",
        "verdict": rng.choice(VERDICTS),
        "url": rng.choice(["https://t.example/edge/clickstreamEvents", hostile]),
        "status_code": rng.choice([201, None]),
        "consent_reference": reference,
        "error": rng.choice([None, hostile]),
        "seq": n,
        "findings": rng.choice([[], [{"kind": "x", "message": hostile}]]),
    }


def expected(frames: bytes) -> list[int]:
    tokens = []
    for event in frames.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in event.splitlines() if line)
        if fields.get("event") != "delivery":
            continue
        data = json.loads(fields["data"])
        reference = data["consent_reference"]
        if data["verdict"] in VERDICTS[1:] and reference and reference[3:].isdigit() and reference[:3] == "lb-":
            tokens.append(int(reference[3:]))
    return tokens


def test_final_tokens_agree_with_json_loads_of_every_event() -> None:
    rng = random.Random(15)
    frames = [change(item(n, rng)).frame for n in range(2000)]
    frames.insert(7, totals_frame("summary", {"healthy": True, "note": '"verdict":"failed"'}))
    joined = b"".join(frames)
    assert final_tokens(joined) == expected(joined)
    assert 200 < len(expected(joined)) < 1000  # the sample holds finals, pendings and other references
