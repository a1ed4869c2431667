"""Giving Angular's worker manifest the hash of index.html with the observer: only when the proxy knows it."""

import json

from clickwatch.core.inject import inject, script_element
from clickwatch.core.serviceworker import ShellHashes, is_manifest, rewrite_manifest, sha1, with_observer

SHELL = b"<!doctype html><html><head><title>Shop</title></head><body><app-root></app-root></body></html>"
OBSERVED = with_observer(SHELL, "text/html; charset=utf-8")
ORIGIN = "https://shop.example:443"


def manifest(index_hash: str = sha1(SHELL)) -> bytes:
    """An ngsw.json as Angular's CLI writes it (pretty-printed, keys in its order)."""
    value = {
        "configVersion": 1,
        "timestamp": 1764255600000,
        "index": "/index.html",
        "assetGroups": [{"name": "app", "installMode": "prefetch", "urls": ["/index.html", "/main.js"]}],
        "dataGroups": [],
        "hashTable": {"/index.html": index_hash, "/main.js": "0" * 40},
        "navigationUrls": [{"positive": True, "regex": "^\\/.*$"}],
        "navigationRequestStrategy": "performance",
    }
    return json.dumps(value, indent=2).encode()


def learned() -> ShellHashes:
    shells = ShellHashes()
    shells.learn(ORIGIN, SHELL, "text/html; charset=utf-8")
    return shells


def test_the_index_hash_becomes_the_hash_of_the_page_with_the_observer_and_nothing_else_changes():
    result = rewrite_manifest(manifest(), learned().of(ORIGIN))
    assert result is not None
    body, files = result
    rewritten, original = json.loads(body), json.loads(manifest())
    assert rewritten["hashTable"]["/index.html"] == sha1(OBSERVED) != sha1(SHELL)
    del rewritten["hashTable"]["/index.html"], original["hashTable"]["/index.html"]
    assert rewritten == original
    assert list(json.loads(body)) == list(json.loads(manifest()))  # key order kept: the worker hashes what it parsed
    assert [(f.path, f.original, f.observed) for f in files] == [("/index.html", sha1(SHELL), sha1(OBSERVED))]


def test_the_same_manifest_is_rewritten_to_the_same_bytes_so_update_checks_find_nothing_new():
    shells = learned()
    first = rewrite_manifest(manifest(), shells.of(ORIGIN))
    assert first is not None and first == rewrite_manifest(manifest(), shells.of(ORIGIN))
    # The observer is added the same way every time (no token, no nonce): the worker's copy gets these bytes.
    assert with_observer(SHELL, "text/html") == OBSERVED


def test_the_workers_copy_carries_the_element_that_asks_for_a_token_and_nothing_else_changes():
    assert (
        SHELL.replace(b"<head>", b'<head><script src="/__clickwatch/observer.js" data-clickwatch-worker></script>')
        == OBSERVED
    )
    already = inject(SHELL, "text/html", script_element())
    assert already is not None and with_observer(already, "text/html") is None


def test_nothing_is_rewritten_when_the_proxy_never_saw_that_index_with_the_observer():
    assert rewrite_manifest(manifest(), {}) is None
    assert rewrite_manifest(manifest(index_hash="f" * 40), learned().of(ORIGIN)) is None  # a new build
    assert rewrite_manifest(manifest(), learned().of("https://other.example:443")) is None


def test_what_is_not_an_angular_manifest_is_left_alone():
    known = learned().of(ORIGIN)
    for body in (b"", b"not json", b"[]", json.dumps({"configVersion": 2}).encode(), b"[" * 100000):
        assert rewrite_manifest(body, known) is None


def test_manifest_paths():
    assert is_manifest("/ngsw.json") and is_manifest("/app/ngsw.json?ngsw-cache-bust=0.5")
    assert not is_manifest("/ngsw.json.map") and not is_manifest("/static/ngsw.js")


def test_only_the_last_pages_of_an_origin_are_kept_and_no_large_one():
    shells = ShellHashes()
    pages = [SHELL.replace(b"Shop", f"Shop {n}".encode()) for n in range(3)]
    for page in pages:
        shells.learn(ORIGIN, page, "text/html")
    shells.learn(ORIGIN, b"<html><head></head>" + b" " * (300 << 10) + b"</html>", "text/html")
    assert set(shells.of(ORIGIN)) == {sha1(pages[1]), sha1(pages[2])}
