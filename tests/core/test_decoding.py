import base64
import gzip
import json
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from clickwatch.core.decoding import BINARY_PREFIX_BYTES, MAX_DECODED_BYTES, decode_body, undo_content_encoding
from clickwatch.core.model import BodyKind

EVENT = {"productSku": "300938", "productName": "Photosmart E317", "productPrice": 114.12}
EVENT_BYTES = json.dumps(EVENT).encode()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
        ("identity", lambda b: b),
    ],
)
def test_content_encodings_are_undone(encoding, encode):
    body = decode_body(encode(EVENT_BYTES), encoding, "application/json")
    assert body.kind is BodyKind.JSON
    assert body.parsed == EVENT
    assert body.size == len(EVENT_BYTES)


def test_beacon_json_as_text_plain_is_parsed():
    body = decode_body(EVENT_BYTES, "", "text/plain;charset=UTF-8")
    assert body.kind is BodyKind.JSON
    assert body.parsed == EVENT


def test_json_array_of_events_is_parsed():
    body = decode_body(b'[{"a":1},{"b":2}]', "", "")
    assert body.kind is BodyKind.JSON
    assert body.parsed == [{"a": 1}, {"b": 2}]


def test_invalid_json_with_json_type_is_text_with_a_note():
    body = decode_body(b'{"a":', "", "application/json")
    assert body.kind is BodyKind.TEXT
    assert body.text == '{"a":'
    assert body.note is not None
    assert body.note.startswith("invalid JSON")


def test_plain_text_stays_text():
    body = decode_body(b"hello=world", "", "application/x-www-form-urlencoded")
    assert body.kind is BodyKind.TEXT
    assert body.parsed is None


def test_empty_body():
    body = decode_body(b"", "gzip", "application/json")
    assert body.kind is BodyKind.EMPTY
    assert body.size == 0


def test_long_body_is_truncated_and_flagged_but_parsed_whole():
    big = json.dumps({"items": ["x" * 100] * 1000}).encode()
    body = decode_body(big, "", "application/json", limit=1000)
    assert body.truncated
    assert body.text is not None
    assert len(body.text) == 1000
    assert body.size == len(big)
    assert body.parsed["items"][999] == "x" * 100


def test_non_utf8_bytes_become_a_flagged_base64_prefix():
    raw = b"\xff\xfe\x00garbage" * 200
    body = decode_body(raw, "", "application/json")
    assert body.kind is BodyKind.BINARY
    assert body.truncated
    assert body.text is not None
    assert base64.b64decode(body.text) == raw[:BINARY_PREFIX_BYTES]
    assert body.note is not None
    assert "utf-8" in body.note


def test_declared_charset_is_honoured():
    body = decode_body('{"q": "caf\u00e9"}'.encode("latin-1"), "", "application/json; charset=iso-8859-1")
    assert body.kind is BodyKind.JSON
    assert body.parsed == {"q": "caf\u00e9"}


@pytest.mark.parametrize("charset", ["no-such-charset", "punycode", "idna", "rot13", "hex", "unicode_escape"])
def test_unknown_or_odd_charset_is_read_as_utf8_with_a_note(charset):
    # As browsers do with a label they do not know: UTF-8, and the note says the declared charset was not used.
    body = decode_body(b'{"a": 1}', "", f"application/json; charset={charset}")
    assert body.kind is BodyKind.JSON
    assert body.parsed == {"a": 1}
    assert body.note is not None
    assert charset in body.note
    assert "read as UTF-8" in body.note


def test_odd_charset_and_bytes_that_are_not_utf8_are_binary_with_a_note():
    body = decode_body(b'{"a":1}\xff', "", "application/json; charset=punycode")
    assert body.kind is BodyKind.BINARY
    assert body.note is not None
    assert "punycode" in body.note


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "compress"])
def test_corrupt_or_unknown_encoding_keeps_raw_bytes_with_a_note(encoding):
    body = decode_body(b"definitely not compressed", encoding, "application/json")
    assert body.kind is BodyKind.BINARY
    assert body.note is not None
    assert "content-encoding" in body.note
    assert base64.b64decode(body.text or "") == b"definitely not compressed"


def test_truncated_gzip_is_reported_not_half_decoded():
    data = gzip.compress(EVENT_BYTES)[:-10]
    body = decode_body(data, "gzip", "application/json")
    assert body.kind is BodyKind.BINARY
    assert body.note is not None


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("br", lambda b: brotli.compress(b, quality=1)),
        # The frame states its size: zstandard's own max_output_size does not hold then.
        ("zstd", lambda b: zstandard.ZstdCompressor(level=1).compress(b)),
        ("zstd", lambda b: zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b)),
    ],
    ids=["gzip", "br", "zstd-sized", "zstd-unsized"],
)
def test_decompression_bomb_is_bounded(encoding, compress):
    bomb = compress(b"\0" * (300 * 1024 * 1024))
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        body = decode_body(bomb, encoding, "application/json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert body.kind is BodyKind.BINARY
    assert body.note is not None
    assert "exceeds" in body.note
    # A few times the cap at most: the 300 MB body is never built.
    assert peak < 3 * MAX_DECODED_BYTES


def test_truncated_brotli_is_reported_not_half_decoded():
    body = decode_body(brotli.compress(EVENT_BYTES)[:-3], "br", "application/json")
    assert body.kind is BodyKind.BINARY
    assert body.note is not None


def test_undo_content_encoding_order_is_last_applied_first():
    data = gzip.compress(zlib.compress(b"x"))
    assert undo_content_encoding(data, "deflate, gzip") == b"x"
