"""The vLLM engine on a real GPU with a small real model: `just test-gpu` (see docs/engines.md).

Runs only where vLLM is installed (`dim[vllm]`) and a CUDA GPU is visible; elsewhere the module
is skipped with that reason. Model: `DIM_TEST_VLLM_MODEL` (default Qwen/Qwen2.5-0.5B-Instruct,
downloaded on first use unless `DIM_MODEL_CACHE_DIR` already holds it).
"""

from __future__ import annotations

import asyncio
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'dim[vllm]' on a GPU box)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible", allow_module_level=True)

from events.bus import Bus  # noqa: E402
from events.inference import ChatMessage, Prompt, SamplingParams  # noqa: E402
from events.jobs import JobCompleted  # noqa: E402
from services.client import submit  # noqa: E402
from services.engines.protocol import GenerationRequest  # noqa: E402
from services.engines.vllm_engine import VllmEngine  # noqa: E402
from services.settings import Settings  # noqa: E402
from tests.mesh import mesh, wait_terminal  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
MODEL = os.environ.get("DIM_TEST_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
CHAT = Prompt(messages=(ChatMessage(role="user", content="Count from one to five."),))


def _vllm_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "engine": "vllm",
            "models": (MODEL,),
            "capacity": 16,
            "vllm_gpu_memory_utilization": 0.5,
            "vllm_max_model_len": 2048,
        }
    )


async def test_engine_streams_deltas_usage_and_aborts(settings: Settings) -> None:
    engine = VllmEngine(_vllm_settings(settings), MODEL)
    await engine.start()
    try:
        await engine.check_health()
        assert engine.max_context == 2048
        chunks = [
            c
            async for c in engine.generate(
                GenerationRequest("g1", MODEL, CHAT, SamplingParams(max_tokens=24, temperature=0))
            )
        ]
        last = chunks[-1]
        assert last.finish_reason in ("stop", "length") and last.usage is not None
        assert last.usage.completion_tokens == sum(c.tokens for c in chunks)
        assert last.usage.prompt_tokens > 5  # the chat template wraps the message
        assert "".join(c.text for c in chunks).strip()

        long = SamplingParams(max_tokens=1000, temperature=0)
        gen = engine.generate(GenerationRequest("g2", MODEL, CHAT, long))
        seen = [await gen.__anext__()]
        await engine.abort("g2")
        seen += [c async for c in gen]
        assert seen[-1].finish_reason == "abort"
        assert seen[-1].usage is not None and seen[-1].usage.completion_tokens < 1000
    finally:
        await engine.close()


async def test_a_vllm_worker_serves_a_job_through_the_mesh(bus: Bus, settings: Settings) -> None:
    s = _vllm_settings(settings)
    async with mesh(s) as m:
        await m.orchestrator()
        worker = await m.worker("gpu-0", **s.model_dump(include={"engine", "models", "capacity"}))
        for _ in range(600):  # the model loads before the node announces itself
            if worker.obj.cold_start_s:
                break
            await asyncio.sleep(0.5)
        job = await submit(
            bus, model=MODEL, prompt=CHAT, params=SamplingParams(max_tokens=16, temperature=0)
        )
        events = await wait_terminal(bus, job.job_id, timeout_s=120)
        done = events[-1].data
        assert isinstance(done, JobCompleted), events[-1]
        assert done.output.strip() and done.usage.completion_tokens > 0
