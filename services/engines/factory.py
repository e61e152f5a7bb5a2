"""Build the engine a worker's settings ask for."""

from __future__ import annotations

from services.engines.protocol import Engine
from services.engines.simulated import SimulatedEngine
from services.settings import Settings


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``DIM_ENGINE`` serving ``DIM_MODELS``."""
    if settings.engine == "simulated":
        return SimulatedEngine(
            settings.models,
            capacity=settings.capacity,
            ttft_ms=settings.sim_ttft_ms,
            tokens_per_s=settings.sim_tokens_per_s,
            error_rate=settings.sim_error_rate,
            hang_rate=settings.sim_hang_rate,
            seed=settings.sim_seed,
        )
    raise ValueError(f"unknown engine {settings.engine!r}; available: simulated")
