"""Turn raw message bytes into a storable body: undo content encodings, parse JSON, bound the size."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable

import brotli
import zstandard

from clickwatch.core.model import Body, BodyKind

BINARY_PREFIX_BYTES = 512
# A decompression bomb must not take the proxy's memory: stop inflating well past any sane event.
MAX_DECODED_BYTES = 64 * 1024 * 1024


class DecodeError(ValueError):
    """A body could not be decoded as its Content-Encoding claims."""


def _gunzip(data: bytes) -> bytes:
    return _inflate(data, zlib.MAX_WBITS | 16)


def _deflate(data: bytes) -> bytes:
    # "deflate" is zlib-wrapped by the RFC, but some servers send raw deflate.
    try:
        return _inflate(data, zlib.MAX_WBITS)
    except zlib.error:
        return _inflate(data, -zlib.MAX_WBITS)


def _inflate(data: bytes, wbits: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, MAX_DECODED_BYTES)
    if d.unconsumed_tail:
        raise DecodeError(f"decoded body exceeds {MAX_DECODED_BYTES} bytes")
    if not d.eof:
        raise zlib.error("incomplete or truncated stream")
    return out


def _brotli(data: bytes) -> bytes:
    # Bounded as it goes: an 841-byte brotli body can decode to gigabytes.
    decompressor = brotli.Decompressor()
    out = decompressor.process(data, output_buffer_limit=MAX_DECODED_BYTES + 1)
    if len(out) > MAX_DECODED_BYTES:
        raise DecodeError(f"decoded body exceeds {MAX_DECODED_BYTES} bytes")
    if not decompressor.is_finished():
        raise brotli.error("incomplete or truncated stream")
    return bytes(out)


def _zstd(data: bytes) -> bytes:
    # zstandard ignores max_output_size when the frame states its size: check the stated size first (a frame
    # that decodes to another size than it states is an error in zstd itself).
    size = zstandard.frame_content_size(data)
    if size < 0:  # not stated: read up to the cap, to say "exceeds" rather than "corrupt"
        size = len(zstandard.ZstdDecompressor().stream_reader(data).read(MAX_DECODED_BYTES + 1))
    if size > MAX_DECODED_BYTES:
        raise DecodeError(f"decoded body exceeds {MAX_DECODED_BYTES} bytes")
    return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECODED_BYTES))


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
    "identity": lambda b: b,
}


def undo_content_encoding(data: bytes, content_encoding: str) -> bytes:
    """Undo every coding in a Content-Encoding header, last applied first."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise DecodeError(f"unsupported content-encoding {coding!r}")
        try:
            data = decoder(data)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"{coding} data is corrupt ({exc})") from None
    return data


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"').lower()
    return None


def _looks_like_json(text: str, content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("json") or media.endswith("+json"):
        return True
    # Beacons post JSON as text/plain; some tags omit the type entirely.
    return media in ("", "text/plain", "application/x-www-form-urlencoded") and text.lstrip()[:1] in ("{", "[")


def _binary(data: bytes, size: int, note: str | None) -> Body:
    prefix = base64.b64encode(data[:BINARY_PREFIX_BYTES]).decode("ascii")
    return Body(BodyKind.BINARY, prefix, size, truncated=len(data) > BINARY_PREFIX_BYTES, note=note)


def decode_body(raw: bytes, content_encoding: str = "", content_type: str = "", limit: int = 65536) -> Body:
    """Decode a raw body into what is stored: JSON or text up to `limit` characters, or a base64 prefix."""
    if not raw:
        return Body(BodyKind.EMPTY, None, 0)
    note: str | None = None
    data = raw
    if content_encoding:
        try:
            data = undo_content_encoding(raw, content_encoding)
        except DecodeError as exc:
            return _binary(raw, len(raw), f"could not undo content-encoding: {exc}")
    size = len(data)
    if size == 0:
        return Body(BodyKind.EMPTY, None, 0)
    charset = _charset(content_type) or "utf-8"
    try:
        text = data.decode(charset)
    except (UnicodeDecodeError, LookupError) as exc:
        return _binary(data, size, f"not valid {charset} text ({exc.__class__.__name__})")
    kind = BodyKind.TEXT
    parsed = None
    if _looks_like_json(text, content_type):
        try:
            parsed = json.loads(text)
            kind = BodyKind.JSON
        except ValueError as exc:
            note = f"invalid JSON: {exc}"
    truncated = len(text) > limit
    return Body(kind, text[:limit] if truncated else text, size, truncated=truncated, note=note, parsed=parsed)
