"""The error answers in the OpenAPI document as the gateway gives them: OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``, gateway/errors.py), declared for every
status an operation can answer with — not Litestar's default validation body, which dim never
sends."""

from __future__ import annotations

from litestar.enums import MediaType
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

ERROR = "Error"

_WHY = {
    400: "the request is invalid (the message names the field in `param`)",
    401: "no valid API key or access token",
    403: "the caller may not do this (an admin's operation, another tenant's resource)",
    404: "no such resource for this caller, or no live node serves the model",
    409: "the resource's state forbids it (a job already ended, too many keys, an email taken)",
    413: "the request is over a size bound (body, worst-case prompt)",
    429: "a rate limit, a quota or a bound on held work (see `Retry-After`)",
    500: "an internal error; the `x-request-id` header identifies it in the logs",
    503: "NATS or the model's workers cannot take it now (see `Retry-After`)",
}
_ALL = (400, 500, 503)
_API = (401, 403, 404, 409, 413, 429)
# Operations anyone may call (`{}`: no credentials), or with a key for more (registration).
_PUBLIC = {
    "/healthz": [{}],
    "/readyz": [{}],
    "/.well-known/jwks.json": [{}],
    "/v1/auth/login": [{}],
    "/v1/auth/refresh": [{}],
    "/v1/auth/register": [{}, {"BearerAuth": []}],
}


def error_schema() -> Schema:
    """The schema of every error body."""
    text = Schema(type=OpenAPIType.STRING)
    maybe = Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL])
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error"],
        properties={
            "error": Schema(
                type=OpenAPIType.OBJECT,
                required=["message", "type", "param", "code"],
                properties={"message": text, "type": text, "param": maybe, "code": maybe},
            )
        },
        description="An error, as OpenAI's API gives them",
    )


def document_errors(openapi: OpenAPI) -> None:
    """Declare the error answers of every operation of `openapi`, and which need no
    credentials (in place)."""
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas[ERROR] = error_schema()
    body = {
        MediaType.JSON.value: OpenAPIMediaType(schema=Reference(f"#/components/schemas/{ERROR}"))
    }
    for path, item in (openapi.paths or {}).items():
        statuses = _ALL + (_API if path.startswith("/v1/") else ())
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            for status in statuses:
                responses[str(status)] = OpenAPIResponse(description=_WHY[status], content=body)
            operation.responses = responses
            if path in _PUBLIC:
                operation.security = _PUBLIC[path]
