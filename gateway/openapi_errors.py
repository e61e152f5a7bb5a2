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
    502: "every attempt of the job's task failed on the workers",
    503: "NATS or the model's workers cannot take it now (see `Retry-After`)",
    504: "no answer within DIM_REQUEST_TIMEOUT_S (the job is cancelled)",
}
# What each operation can answer besides its success, from its handler and the dependencies it
# takes. Every authenticated one: 401 (credentials), 429 (its caller's and tenant's rate
# limits), 503 (NATS away), 500. A body: 400 (invalid) and 413 (over DIM_MAX_BODY_BYTES).
_AUTH = (401, 429, 500, 503)
_BODY = (400, 413)
_COMPLETION = (*_AUTH, *_BODY, 404, 409, 502, 504)  # 409: cancelled meanwhile
_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/healthz"): (500,),
    ("get", "/readyz"): (500, 503),
    ("get", "/.well-known/jwks.json"): (500,),
    ("get", "/v1/models"): _AUTH,
    ("get", "/v1/models/{model_id}"): (*_AUTH, 404),
    ("post", "/v1/chat/completions"): _COMPLETION,
    ("post", "/v1/completions"): _COMPLETION,
    ("post", "/v1/embeddings"): _COMPLETION,
    ("post", "/v1/responses"): _COMPLETION,
    ("get", "/v1/jobs"): (*_AUTH, 400),
    ("post", "/v1/jobs"): (*_AUTH, *_BODY, 404),
    ("get", "/v1/jobs/{job_id}"): (*_AUTH, 404),
    ("delete", "/v1/jobs/{job_id}"): (*_AUTH, 404, 409),
    ("get", "/v1/jobs/{job_id}/events"): (*_AUTH, 400, 404),
    ("get", "/v1/keys"): _AUTH,
    ("post", "/v1/keys"): (*_AUTH, *_BODY, 403, 409),
    ("delete", "/v1/keys/{key_id}"): (*_AUTH, 404),
    ("get", "/v1/nodes"): (*_AUTH, 403),
    ("get", "/v1/usage"): (*_AUTH, 400),
    ("post", "/v1/auth/login"): (*_AUTH, *_BODY),
    ("post", "/v1/auth/refresh"): (*_AUTH, *_BODY),
    ("post", "/v1/auth/register"): (*_AUTH, *_BODY, 403, 409),
    ("post", "/v1/auth/logout"): (*_AUTH, 400),
    ("get", "/v1/me"): _AUTH,
    ("delete", "/v1/sessions/{session_id}"): (*_AUTH, 403, 404),
    ("post", "/v1/files"): (*_AUTH, *_BODY),
    ("get", "/v1/files"): (*_AUTH, 400),
    ("get", "/v1/files/{file_id}"): (*_AUTH, 404),
    ("get", "/v1/files/{file_id}/content"): (*_AUTH, 404),
    ("delete", "/v1/files/{file_id}"): (*_AUTH, 404),
    ("post", "/v1/batches"): (*_AUTH, *_BODY, 404),
    ("get", "/v1/batches"): (*_AUTH, 400),
    ("get", "/v1/batches/{batch_id}"): (*_AUTH, 404),
    ("post", "/v1/batches/{batch_id}/cancel"): (*_AUTH, 404, 409),
    ("get", "/v1/stats"): _AUTH,
    ("post", "/v1/ws-tickets"): _AUTH,
}
_UNLISTED = (400, 401, 403, 404, 409, 413, 429, 500, 503)  # an operation added and not listed
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
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            # Litestar declares 400 for its own validation of parameters: dim answers that in
            # OpenAI's shape too, so it is kept, with the real body
            declared = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
            for status in sorted(declared | set(_STATUSES.get((method, path), _UNLISTED))):
                responses[str(status)] = OpenAPIResponse(description=_WHY[status], content=body)
            operation.responses = responses
            if path in _PUBLIC:
                operation.security = _PUBLIC[path]
