"""`POST /v1/responses`: the stateless Responses API on the same job path as chat."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from gateway import completions, responses
from gateway.auth import GatewayDep, PrincipalDep
from gateway.capable import capable, refuse_unserved
from gateway.schemas.responses import ResponseRequest

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ResponsesController(Controller):
    """Responses, answered whole or as a stream of typed events; none is kept."""

    path = "/v1/responses"
    tags = ["openai"]

    @post(
        operation_id="createResponse",
        summary="A response (stateless: input, instructions, function tools, text format)",
        status_code=200,
    )
    async def create(
        self, data: JSONBody[ResponseRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> Response[Any]:
        """Run the input through the mesh; `stream: true` answers with the Responses events."""
        refuse_unserved(data.unserved())  # never a 200 that silently did something else
        prompt = data.prompt()
        params = data.sampling(gateway.settings.default_max_tokens)
        capable(gateway, principal.tenant, data.model, prompt, params)
        started = await completions.start(
            gateway, principal, data.model, prompt, params, stream=data.stream, end_user=data.user
        )
        headers = {"x-dim-job-id": started.job_id}
        if data.stream:
            body = responses.events(gateway, started, data)
            return Stream(body, media_type="text/event-stream", headers=headers | _SSE_HEADERS)
        done = await completions.answer(gateway, started)
        return Response(responses.whole(started, data, done), headers=headers)
