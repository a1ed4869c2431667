"""Wire messages for store tests: a clickstream request and its answer, as the proxy would hand them on."""

from clickwatch.store import wire


def seen(uid: str, body: bytes = b'{"productSku":"1"}') -> wire.Request:
    return wire.Request(
        uid=uid,
        run="default",
        kind="clickstream",
        target=None,
        method="POST",
        url="https://t.example/edge/clickstreamEvents",
        host="t.example",
        path="/edge/clickstreamEvents",
        client_addr="127.0.0.1",
        fields=(
            (b"User-Agent", b"pytest"),
            (b"hybris-schema", b"context/commerce/ProductView"),
            (b"content-type", b"application/json"),
        ),
        body=body,
        sent_at=1000.0,
    )


def answered(uid: str, status: int | None = 201) -> wire.Answer:
    return wire.Answer(
        uid=uid,
        kind="clickstream",
        sent_at=1000.0,
        ended_at=1000.25,
        status_code=status,
        fields=(),
        body=b"",
        error=None if status else "connection reset",
    )
