"""The comparison point for the gateway benchmark: the simulated engine behind a bare Litestar
endpoint (same server, framework and engine as dim's gateway, no mesh). Not part of dim."""

from __future__ import annotations

import sys
import time
from typing import Any

import uvicorn
from litestar import Litestar, post
from litestar.params import JSONBody

from events.inference import Prompt
from gateway.protocol import ChatCompletionRequest
from services.cpu_policy import use_batch_policy
from services.engines.protocol import GenerationRequest
from services.engines.simulated import SimulatedEngine
from services.settings import Settings

ENGINE = SimulatedEngine(("sim-small",), ttft_ms=0, tokens_per_s=0)


@post("/v1/chat/completions", status_code=200)
async def complete(data: JSONBody[ChatCompletionRequest]) -> dict[str, Any]:
    """Generate directly with the engine."""
    request = GenerationRequest(
        str(time.perf_counter_ns()), data.model, data.prompt(), data.sampling(1024)
    )
    text, finish, usage = [], "stop", None
    async for chunk in ENGINE.generate(request):
        text.append(chunk.text)
        if chunk.finish_reason:
            finish, usage = chunk.finish_reason, chunk.usage
    assert usage is not None
    return {
        "id": "bare",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }


if __name__ == "__main__":
    _ = Prompt  # the bare app speaks the same request schema as the gateway
    use_batch_policy(Settings().sched_batch)  # the CPU policy of dim's own processes
    uvicorn.run(
        Litestar([complete]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
    )
