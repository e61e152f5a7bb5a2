"""The OpenAI-compatible API: models, chat completions, completions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from pydantic import BaseModel

from events.inference import Prompt
from events.jobs import JobCompleted
from events.records import NodeRecord
from gateway import answers, completions
from gateway.auth import GatewayDep, PrincipalDep
from gateway.capable import capable, refuse_unserved
from gateway.errors import ApiError
from gateway.principal import Principal
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
    ToolCallOut,
    UsageOut,
    _Sampling,
)
from gateway.runtime import Gateway
from gateway.sse import Kind

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ModelsController(Controller):
    """Models some live node serves."""

    path = "/v1/models"
    tags = ["openai"]

    @get(operation_id="listModels", summary="Models with at least one live node")
    async def list_models(self, gateway: GatewayDep, principal: PrincipalDep) -> ModelList:
        """Every model a live node serves to the caller's tenant, created at the earliest start
        of a node serving it."""
        tenant = principal.tenant
        models = sorted({m for n in gateway.nodes.live() if _serves(n, tenant) for m in n.models})
        return ModelList(data=[_card(gateway, m, tenant) for m in models])

    @get(
        "/{model_id:path}",
        operation_id="retrieveModel",
        summary="One model: its context length, engines and capabilities",
    )
    async def retrieve_model(
        self, model_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> ModelCard:
        """A model a live node serves (404 otherwise: the list names them)."""
        name = model_id.lstrip("/")
        if not [n for n in gateway.nodes.serving(name) if _serves(n, principal.tenant)]:
            raise ApiError(
                404,
                f"no live node serves model {name!r}: GET /v1/models lists those that do",
                code="model_not_found",
                param="model",
            )
        return _card(gateway, name, principal.tenant)


def _serves(node: NodeRecord, tenant: str) -> bool:
    """Whether `node` takes `tenant`'s tasks (a node dedicated to others does not)."""
    return not node.tenants or tenant in node.tenants


def _card(gateway: Gateway, model: str, tenant: str) -> ModelCard:
    """What the live nodes serving `model` to `tenant` say of it."""
    nodes = [n for n in gateway.nodes.serving(model) if _serves(n, tenant)]
    contexts = [n.max_context for n in nodes if n.max_context]
    return ModelCard(
        id=model,
        created=min((int(n.started_at.timestamp()) for n in nodes), default=0),
        context_length=max(contexts) if contexts else None,
        engines=sorted({n.engine for n in nodes}),
        nodes=len(nodes),
        capabilities=sorted({c for n in nodes for c in n.can(model)}),
    )


def _chat_body(started: completions.Started, cid: str, done: JobCompleted) -> ChatCompletion:
    return ChatCompletion(
        id=cid,
        created=started.created,
        model=started.model,
        choices=[
            ChatChoice(
                index=c.index,
                message=AssistantMessage(
                    content=c.output if c.output or not c.tool_calls else None,
                    tool_calls=[
                        ToolCallOut.model_validate(t) for t in answers.tool_calls(c.tool_calls)
                    ]
                    if c.tool_calls
                    else None,
                ),
                finish_reason=c.finish_reason,
                logprobs=answers.chat_logprobs(c.logprobs),
            )
            for c in completions.choices_of(done)
        ],
        usage=UsageOut.of(done.usage),
    )


def _text_body(started: completions.Started, cid: str, done: JobCompleted) -> Completion:
    return Completion(
        id=cid,
        created=started.created,
        model=started.model,
        choices=[
            TextChoice(
                index=c.index,
                text=c.output,
                finish_reason=c.finish_reason,
                logprobs=answers.text_logprobs(c.logprobs),
            )
            for c in completions.choices_of(done)
        ],
        usage=UsageOut.of(done.usage),
    )


async def _respond(
    gateway: Gateway,
    principal: Principal,
    data: _Sampling,
    prompt: Prompt,
    kind: Kind,
    whole: Callable[[completions.Started, str, JobCompleted], BaseModel],
) -> Response[Any]:
    """Run a completion; answer with SSE chunks (`stream: true`) or the whole body."""
    refuse_unserved(data.unserved())  # never a 200 that silently did something else
    params = data.sampling(gateway.settings.default_max_tokens)
    capable(gateway, principal.tenant, data.model, prompt, params)
    started = await completions.start(
        gateway, principal, data.model, prompt, params, stream=data.stream, end_user=data.user
    )
    headers = {"x-dim-job-id": started.job_id}
    cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{started.job_id}"
    if data.stream:
        body = completions.stream(
            gateway, started, kind=kind, id=cid, include_usage=data.include_usage
        )
        return Stream(body, media_type="text/event-stream", headers=headers | _SSE_HEADERS)
    done = await completions.answer(gateway, started)
    return Response(whole(started, cid, done), headers=headers)


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
        return await _respond(gateway, principal, data, data.prompt(), "chat", _chat_body)


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
        return await _respond(gateway, principal, data, data.text_prompt(), "text", _text_body)
