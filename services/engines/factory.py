"""Build the engine a worker's settings ask for."""

from __future__ import annotations

from services.engines.openai_upstream import OpenAIUpstreamEngine
from services.engines.protocol import Engine
from services.engines.simulated import SimulatedEngine
from services.settings import Settings


def served_models(settings: Settings) -> tuple[str, ...]:
    """The models a worker serves: `DIM_MODELS` and then the aliases `DIM_MODEL_ALIASES` adds."""
    aliases = tuple(a for a in settings.model_aliases if a not in settings.models)
    return (*settings.models, *aliases)


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``DIM_ENGINE``."""
    if settings.engine == "simulated":
        return SimulatedEngine(
            served_models(settings),
            capacity=settings.capacity,
            ttft_ms=settings.sim_ttft_ms,
            tokens_per_s=settings.sim_tokens_per_s,
            error_rate=settings.sim_error_rate,
            hang_rate=settings.sim_hang_rate,
            crash_rate=settings.sim_crash_rate,
            seed=settings.sim_seed,
            max_context=settings.sim_max_context,
            capabilities=settings.sim_capabilities,
        )
    if settings.engine == "openai":
        if not settings.upstream_url:
            raise ValueError(
                "the openai engine needs an upstream: --upstream http://host:port/v1 "
                "(env DIM_UPSTREAM_URL)"
            )
        return OpenAIUpstreamEngine(
            settings.upstream_url,
            served_models(settings),
            api_key=settings.upstream_api_key,
            capacity=settings.capacity,
            aliases=settings.model_aliases,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            capabilities=settings.upstream_capabilities,
        )
    if settings.engine == "vllm":
        from services.engines.vllm_engine import VllmEngine

        if len(settings.models) != 1:
            raise ValueError(
                "a vllm worker serves one model (--model <hf-id-or-path>); "
                "run one worker per model, or add names with DIM_MODEL_ALIASES"
            )
        model, *aliases = served_models(settings)
        return VllmEngine(settings, model, tuple(aliases))
    raise ValueError(f"unknown engine {settings.engine!r}; available: simulated, openai, vllm")
