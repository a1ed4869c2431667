"""Property-based run of every JSON API operation against its OpenAPI schema, over a small real store.

Schemathesis generates valid and invalid requests from the app's own /openapi.json and sends them in-process
(ASGI). No request may end in a server error, and every answer the schema declares must match it: the routes'
response models forbid undeclared fields, so a field renamed on either side fails here. `/api/stream` never ends,
so it is left out; `/api/reset` is included (each operation gets a store of its own). The last tests prove the
conformance check has teeth: an app whose answer drifted from its model fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI, Response
from hypothesis import HealthCheck, strategies
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import JsonSchemaError

from clickwatch.dashboard.main import create_app
from clickwatch.dashboard.models import VisitorList
from clickwatch.dashboard.routes.api import trusted_json
from clickwatch.dashboard.settings import DashboardSettings
from tests.dashboard.conftest import T0, StoreBuilder

# The dashboard refuses Host names other than this machine's (DNS rebinding): call it as a browser would.
BASE_URL = "http://127.0.0.1:8000"
EXCLUDED = {"GET /api/stream"}  # Server-Sent Events: an endless response
MAX_EXAMPLES = 40


def _operation_labels() -> list[str]:
    """Every operation in the published schema, read once at collection so each is a test of its own."""
    spec = create_app(DashboardSettings(db=str(Path("/nonexistent") / "clickwatch.db"))).openapi()
    labels = [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]
    return sorted(label for label in labels if label not in EXCLUDED)


@pytest.fixture
def app(store_builder: Callable[..., StoreBuilder], tmp_path: Path) -> object:
    store = store_builder()
    store.page(at=T0, consent="GIVEN")
    store.push("ProductView", {"productSku": "1"}, at=T0 + 0.5, consent=True)  # a timeline with pushes
    store.event(at=T0 + 1)  # delivered
    store.event(at=T0 + 2, status=400, schema="AddedToCart", body={"productSku": "1", "productQty": 1})
    store.event(at=T0 + 3, status=None, error="connection reset", schema="KeywordSearch", body={"searchTerm": "x"})
    store.event(at=T0 + 4, schema="Bogus")  # an unknown_schema finding
    store.event(at=T0 + 5, status=None)  # still pending when the writer closes: decided as failed
    store.event(at=T0 + 6, run="other", ua="Other browser")  # another run, another visitor
    store.close()
    return create_app(DashboardSettings(db=str(store.path), confdir=str(tmp_path / "mitm")))


def _conforms_when_declared(ctx, response, case):  # type: ignore[no-untyped-def]
    """Schema and content-type conformance for every answer but 422.

    A 422 is only held to "not a server error": the app's own ("cursor: ...", "since: ...") carry a string
    `detail`, not the validation-error list FastAPI declares for 422. The 404 and 503 the routes give are
    declared (`{"detail": str}`) and checked like any answer.
    """
    if response.status_code != 422:
        response_schema_conformance(ctx, response, case)
        content_type_conformance(ctx, response, case)
    return None


def exercise(app: object, label: str) -> list[int]:
    """Send generated requests for one operation, checking each answer; the statuses of the answers."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "127.0.0.1:8000"})
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    calls: list[int] = []

    @hypothesis.given(
        case=strategies.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )
    )
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    def one(case: schemathesis.Case) -> None:
        response = case.call(base_url=BASE_URL, timeout=10)
        calls.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, _conforms_when_declared])

    one()
    return calls


@pytest.mark.parametrize("label", _operation_labels())
def test_operation_never_fails_on_the_server(label: str, app: object) -> None:
    calls = exercise(app, label)
    assert calls, f"{label}: no request was sent"
    assert any(status < 500 for status in calls)


VISITOR_ROW = {
    "run": "default",
    "visitor": "0d50a312bcb3eefa",
    "client_addr": "127.0.0.1",
    "user_agent": "Mozilla/5.0",
    "first_seen": T0,
    "last_seen": T0 + 5,
    "page_loads": 1,
    "last_page_at": T0,
    "consent": "given",
    "consent_since": T0 + 1,
    "pending_decision": None,
}


WITHOUT_CONSENT = {k: v for k, v in VISITOR_ROW.items() if k != "consent"}


def _app_answering(row: dict[str, Any]) -> FastAPI:
    """An app publishing the real visitors model whose answer skips validation (as the long lists do)."""
    app = FastAPI()

    @app.get("/api/visitors", response_model=VisitorList)
    def visitors() -> Response:
        return trusted_json({"items": [row]})

    return app


def test_an_answer_as_its_model_says_passes() -> None:
    assert exercise(_app_answering(VISITOR_ROW), "GET /api/visitors")


@pytest.mark.parametrize(
    "row",
    [
        pytest.param({**WITHOUT_CONSENT, "consent_state": "given"}, id="renamed"),
        pytest.param(WITHOUT_CONSENT, id="missing"),
        pytest.param({**VISITOR_ROW, "consent_source": "cookie"}, id="undeclared"),
        pytest.param({**VISITOR_ROW, "page_loads": "1"}, id="retyped"),
    ],
)
def test_an_answer_that_drifted_from_its_model_fails(row: dict[str, Any]) -> None:
    with pytest.raises((JsonSchemaError, FailureGroup)) as failed:
        exercise(_app_answering(row), "GET /api/visitors")
    assert "Response violates schema" in str(failed.value) + "".join(map(str, getattr(failed.value, "exceptions", ())))
