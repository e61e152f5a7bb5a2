"""The OpenAPI document declares, per operation, the error statuses its handler can answer with
(not one list for all): every operation of the app is in the table, and the table names no
operation the app lacks."""

from __future__ import annotations

from gateway.app import create_app
from gateway.openapi_errors import _STATUSES
from services.settings import Settings


def _operations() -> dict[tuple[str, str], dict[str, object]]:
    doc = create_app(Settings(jwt_secret="x" * 40)).openapi_schema
    out = {}
    for path, item in (doc.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is not None:
                out[(method, path)] = operation.responses or {}
    return out


def test_every_operation_declares_its_own_error_statuses() -> None:
    operations = _operations()
    assert set(operations) == set(_STATUSES)
    for op, responses in operations.items():
        errors = {int(s) for s in responses if int(s) >= 400}
        assert set(_STATUSES[op]) <= errors <= {*_STATUSES[op], 400}, op  # Litestar's own 400
        for status in errors:  # every error answer in OpenAI's shape
            body = responses[str(status)].content["application/json"].schema  # type: ignore[attr-defined]
            assert body.ref == "#/components/schemas/Error", (op, status)
    chat = {int(s) for s in operations[("post", "/v1/chat/completions")]}
    assert {502, 504, 409} <= chat  # a failed task, no answer in time, cancelled meanwhile
    assert 413 not in {int(s) for s in operations[("get", "/v1/models")]}  # no body: no 413
    assert {int(s) for s in operations[("get", "/healthz")]} == {200, 500}
