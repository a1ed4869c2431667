"""Folding a browser's repeated page loads: what the proxy hands on and in which order."""

import pytest

from clickwatch.core.storefront import PageFolding, Signals, WorkerSightings, read_exchange

GIVEN = b"anonymous-consents=%5B%7B%22templateCode%22%3A%22PROFILE%22%2C%22consentState%22%3A%22GIVEN%22%7D%5D"
PAGE = ((b"Sec-Fetch-Dest", b"document"), (b"Cookie", GIVEN))
HTML = ((b"Content-Type", b"text/html"),)
BROWSER = ("default", "10.0.0.1", "")


def page(cookie: bytes = GIVEN) -> Signals:
    return read_exchange("GET", "/p/1", ((b"Sec-Fetch-Dest", b"document"), (b"Cookie", cookie)), HTML)


def test_unchanged_pages_are_folded_and_handed_on_before_what_changes():
    folding = PageFolding()
    first = page()
    assert folding.note(BROWSER, first, 1.0) == first
    assert folding.note(BROWSER, page(), 2.0) is None
    assert folding.note(BROWSER, page(), 3.0) is None
    # An asset with the same headers adds nothing; a page of another browser is its own.
    asset = read_exchange("GET", "/app.js", ((b"Cookie", GIVEN),), ((b"Content-Type", b"text/javascript"),))
    assert folding.note(BROWSER, asset, 3.5) is None
    other = ("default", "10.0.0.2", "")
    assert folding.note(other, page(), 4.0) is not None
    changed = page(GIVEN + b"; acceleratorSecureGUID=1")
    assert folding.note(BROWSER, changed, 5.0) == changed
    [folded] = folding.flush(BROWSER)
    assert (folded.first_at, folded.last_at, folded.count, folded.signals) == (2.0, 3.0, 2, first)
    assert (folded.signals.page_load, folded.signals.set_cookies) == (True, ())
    assert folding.flush() == ()


def test_a_message_silent_on_sign_in_keeps_the_last_state():
    folding = PageFolding()
    signed_in = page(GIVEN + b"; acceleratorSecureGUID=1")
    assert signed_in.logged_in is True
    folding.note(BROWSER, signed_in, 1.0)
    asset = read_exchange("GET", "/app.js", ((b"Cookie", GIVEN + b"; acceleratorSecureGUID=1"),), None)
    assert asset.logged_in is None
    assert folding.note(BROWSER, asset, 2.0) is None  # nothing new: same cookies, sign-in as it was
    api = read_exchange("GET", "/occ/v2/el/products/1", ((b"Cookie", GIVEN),), None)
    assert folding.note(BROWSER, api, 3.0) == api._replace(logged_in=True)


def test_the_oldest_browser_is_forgotten_beyond_the_bound():
    folding = PageFolding(max_browsers=2)
    for n in range(3):
        folding.note(("default", f"10.0.0.{n}", ""), page(), 1.0)
    assert folding.note(("default", "10.0.0.0", ""), page(), 2.0) is not None  # forgotten: handed on again
    assert folding.note(("default", "10.0.0.2", ""), page(), 2.0) is None


@pytest.mark.parametrize(
    ("path", "fields", "evidence"),
    [
        ("/ngsw-worker.js", ((b"Service-Worker", b"script"), (b"Sec-Fetch-Dest", b"serviceworker")), "its script"),
        ("/ngsw.json?ngsw-cache-bust=0.42", ((b"Sec-Fetch-Dest", b"empty"),), "its manifest"),
        ("/static/app.js?ngsw-cache-bust=0.42", ((b"Sec-Fetch-Dest", b"empty"),), "a file for its cache"),
        ("/p/1", ((b"Sec-Fetch-Mode", b"navigate"), (b"Sec-Fetch-Dest", b"empty")), "a navigation"),
        # Ordinary traffic shows no worker: a page, the worker's own fetch of the shell, an API call.
        ("/p/1", ((b"Sec-Fetch-Mode", b"navigate"), (b"Sec-Fetch-Dest", b"document")), None),
        ("/index.html", ((b"Sec-Fetch-Mode", b"same-origin"), (b"Sec-Fetch-Dest", b"empty")), None),
        ("/occ/v2/el/products/1?fields=ngsw", ((b"Sec-Fetch-Dest", b"empty"),), None),
        ("/ngsw.json.bak", (), None),
    ],
)
def test_signs_of_a_service_worker(path, fields, evidence):
    said = read_exchange("GET", path, fields, HTML)
    if evidence is None:
        assert said.worker == ""
    else:
        assert evidence in said.worker


def test_a_worker_sign_is_handed_on_once_per_origin_and_second():
    sightings = WorkerSightings()
    browser = ("run", "10.0.0.1", "UA")
    assert sightings.note(browser, "https://shop", 100.0)
    assert not sightings.note(browser, "https://shop", 100.5)
    assert sightings.note(browser, "https://other", 100.5)
    assert sightings.note(("run", "10.0.0.2", "UA"), "https://shop", 100.5)
    assert sightings.note(browser, "https://shop", 101.2)
