"""`POST /v1/embeddings`: a job like any other (in the log, under quotas and the fair queue), on
a node whose engine embeds."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, post
from litestar.params import JSONBody

from events import vectors
from gateway import completions
from gateway.auth import GatewayDep, PrincipalDep
from gateway.capable import capable, refuse_unserved
from gateway.errors import ApiError
from gateway.schemas.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage


class EmbeddingsController(Controller):
    """Vectors of texts."""

    path = "/v1/embeddings"
    tags = ["openai"]

    @post(
        operation_id="createEmbedding", summary="Embeddings of one or more texts", status_code=200
    )
    async def create(
        self, data: JSONBody[EmbeddingRequest], gateway: GatewayDep, principal: PrincipalDep
    ) -> Response[Any]:
        """Embed the inputs on a node that serves embeddings for the model."""
        refuse_unserved(data.unserved())  # never a 200 that silently did something else
        prompt, params = data.prompt(), data.params()
        capable(gateway, principal.tenant, data.model, prompt, params)
        started = await completions.start(
            gateway, principal, data.model, prompt, params, stream=False, end_user=data.user
        )
        done = await completions.answer(gateway, started)
        if len(done.embeddings) != len(prompt.texts or ()):
            raise ApiError(
                502,
                f"the node answered {len(done.embeddings)} vectors for {len(prompt.texts or ())} "
                "inputs",
                code="task_failed",
            )
        base64 = data.encoding_format == "base64"
        body = EmbeddingList(
            data=[
                Embedding(index=i, embedding=v if base64 else vectors.decode(v))
                for i, v in enumerate(done.embeddings)
            ],
            model=data.model,
            usage=EmbeddingUsage(
                prompt_tokens=done.usage.prompt_tokens, total_tokens=done.usage.prompt_tokens
            ),
        )
        return Response(body, headers={"x-dim-job-id": started.job_id})
