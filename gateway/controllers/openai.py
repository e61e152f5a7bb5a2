"""The OpenAI-compatible API: models, chat completions, completions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import JSONBody
from litestar.response import Stream

from gateway import completions
from gateway.auth import GatewayDep, PrincipalDep
from gateway.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    TextChoice,
    UsageOut,
)

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ModelsController(Controller):
    """Models some live node serves."""

    path = "/v1/models"
    tags = ["openai"]

    @get(operation_id="listModels", summary="Models with at least one live node")
    async def list_models(self, gateway: GatewayDep, principal: PrincipalDep) -> ModelList:
        """Every model a live node serves, created at the earliest start of a node serving it."""
        first: dict[str, int] = {}
        for node in gateway.nodes.live():
            for model in node.models:
                started = int(node.started_at.timestamp())
                first[model] = min(first.get(model, started), started)
        return ModelList(data=[ModelCard(id=m, created=t) for m, t in sorted(first.items())])


class ChatController(Controller):
    """`POST /v1/chat/completions`."""

    path = "/v1/chat/completions"
    tags = ["openai"]

    @post(
        operation_id="createChatCompletion",
        summary="Chat completion, whole or streamed (SSE)",
        status_code=200,
    )
    async def create(
        self, data: JSONBody[ChatCompletionRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> Response[Any]:
        """Run the chat through the mesh; `stream: true` answers with Server-Sent Events."""
        started = await completions.start(
            gateway,
            principal,
            data.model,
            data.prompt(),
            data.sampling(gateway.settings.default_max_tokens),
        )
        headers = {"x-dim-job-id": started.job_id}
        cid = f"chatcmpl-{started.job_id}"
        if data.stream:
            body = completions.stream(
                gateway, started, kind="chat", id=cid, include_usage=data.include_usage
            )
            return Stream(body, media_type="text/event-stream", headers=headers | _SSE_HEADERS)
        done = await completions.answer(gateway, started)
        result = ChatCompletion(
            id=cid,
            created=started.created,
            model=started.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=done.output), finish_reason=done.finish_reason
                )
            ],
            usage=UsageOut.of(done.usage),
        )
        return Response(result, headers=headers)


class CompletionsController(Controller):
    """`POST /v1/completions`."""

    path = "/v1/completions"
    tags = ["openai"]

    @post(
        operation_id="createCompletion",
        summary="Text completion, whole or streamed (SSE)",
        status_code=200,
    )
    async def create(
        self, data: JSONBody[CompletionRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> Response[Any]:
        """Complete the prompt through the mesh; `stream: true` answers with Server-Sent Events."""
        started = await completions.start(
            gateway,
            principal,
            data.model,
            data.text_prompt(),
            data.sampling(gateway.settings.default_max_tokens),
        )
        headers = {"x-dim-job-id": started.job_id}
        cid = f"cmpl-{started.job_id}"
        if data.stream:
            body = completions.stream(
                gateway, started, kind="text", id=cid, include_usage=data.include_usage
            )
            return Stream(body, media_type="text/event-stream", headers=headers | _SSE_HEADERS)
        done = await completions.answer(gateway, started)
        result = Completion(
            id=cid,
            created=started.created,
            model=started.model,
            choices=[TextChoice(text=done.output, finish_reason=done.finish_reason)],
            usage=UsageOut.of(done.usage),
        )
        return Response(result, headers=headers)
