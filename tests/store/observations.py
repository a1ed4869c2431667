"""Observations for store tests: a clickstream request and its answer, as the proxy would hand them on."""

from clickwatch.core.model import Answer, Kind, RequestSeen


def seen(uid: str, body: bytes = b'{"productSku":"1"}') -> RequestSeen:
    return RequestSeen(
        uid=uid,
        run="default",
        kind=Kind.CLICKSTREAM,
        target=None,
        method="POST",
        url="https://t.example/edge/clickstreamEvents",
        host="t.example",
        path="/edge/clickstreamEvents",
        client_addr="127.0.0.1",
        user_agent="pytest",
        headers=(("hybris-schema", "context/commerce/ProductView"), ("content-type", "application/json")),
        raw_body=body,
        sent_at=1000.0,
    )


def answered(uid: str, status: int | None = 201) -> Answer:
    return Answer(
        uid=uid,
        kind=Kind.CLICKSTREAM,
        sent_at=1000.0,
        ended_at=1000.25,
        status_code=status,
        error=None if status else "connection reset",
    )
