"""A request goes only where it can be honoured: the 400 that names the field no live node of
the model can serve (never an answer that silently left the field out)."""

from __future__ import annotations

from collections.abc import Iterator

from events.capabilities import needs
from events.inference import Prompt, SamplingParams
from gateway.errors import ApiError
from gateway.runtime import Gateway


def refuse_unserved(unserved: Iterator[tuple[str, str]]) -> None:
    """A 400 `unsupported_parameter` naming the first field dim would not honour, if any."""
    refused = next(unserved, None)
    if refused is not None:
        field, why = refused
        raise ApiError(400, f"{field}: {why}", code="unsupported_parameter", param=field)


def capable(
    gateway: Gateway, tenant: str, model: str, prompt: Prompt, params: SamplingParams
) -> None:
    """Raise a 400 naming the first field of the request that no live node serving `model` to
    `tenant` can honour, or, when each can be but no one node does them all, the fields together. A model
    with no live node is left to the job path (it waits for one, then says so)."""
    nodes = [
        n for n in gateway.nodes.serving(model) if not n.tenants or tenant in n.tenants
    ]  # its own
    asked = list(needs(prompt, params))
    if not nodes:
        return
    can = [n.can(model) for n in nodes]
    for field, capability in asked:
        if not any(capability in c for c in can):
            engines = ", ".join(sorted({n.engine for n in nodes}))
            raise ApiError(
                400,
                f"{field}: no live node serving {model!r} can do {capability} (its engines: "
                f"{engines}); GET /v1/models/{model} lists what they can do",
                code="unsupported_parameter",
                param=field,
            )
    wanted = {c for _, c in asked}
    if not any(wanted <= c for c in can):
        fields = ", ".join(dict.fromkeys(f for f, _ in asked))
        raise ApiError(
            400,
            f"no one live node serving {model!r} can do all of {', '.join(sorted(wanted))} "
            f"(asked by {fields}); send them in separate requests",
            code="unsupported_parameter",
            param=asked[0][0],
        )
