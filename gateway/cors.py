"""CORS for browser pages on other origins: off unless `DIM_CORS_ORIGINS` names some."""

from __future__ import annotations

from litestar.config.cors import CORSConfig

from services.settings import Settings

# What a browser page sends besides the simple headers: the key or token, a JSON body, the
# idempotency key of a job, its own request id.
_ALLOW_HEADERS = ["authorization", "content-type", "idempotency-key", "x-request-id"]
# What a page may read from an answer: the request id, the job id of a completion, where a new
# job is, and the rate-limit state (`gateway/limits.py`).
_EXPOSE_HEADERS = [
    "x-request-id",
    "x-dim-job-id",
    "location",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
]


def cors_config(settings: Settings) -> CORSConfig | None:
    """The CORS policy of `settings`; None (no CORS headers at all) when no origin is named.

    Credentials (cookies) are never allowed: dim authenticates with a header, so a page of an
    allowed origin still needs a key or token of its own to do anything."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=_ALLOW_HEADERS,
        expose_headers=_EXPOSE_HEADERS,
        allow_credentials=False,
        max_age=600,
    )
