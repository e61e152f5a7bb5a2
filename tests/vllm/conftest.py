"""The real vLLM, run here: `just test-vllm` (vLLM's CPU build) or `just test-gpu` (CUDA).

Every test in this folder runs vLLM for real on a tiny model made on the spot
(`tests/vllm/tiny_model.py`): no download, no GPU needed. vLLM must be importable — these tests
fail, never skip, without it; `just test-vllm` installs it. Nothing here may reach a model hub.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# vLLM reads these from the environment, in this process and in every process it starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import vllm  # noqa: F401  (missing vLLM is a failure here, not a skip)

from services.settings import Settings
from tests.conftest import fast_settings
from tests.vllm.tiny_model import build


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, built once per test session."""
    return build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def module_settings(nats_url: str) -> Settings:
    """Fast settings in a namespace of the module's own, for services the module shares."""
    return fast_settings(nats_url, f"t{uuid.uuid4().hex[:12]}")
