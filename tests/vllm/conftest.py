"""The real vLLM, run here: `just test-vllm` (vLLM's CPU build) or `just test-gpu` (CUDA).

Every test in this folder runs vLLM for real on a tiny model made on the spot
(`tests/vllm/tiny_model.py`): no download, no GPU needed. vLLM must be importable — these tests
fail, never skip, without it; `just test-vllm` installs it. Nothing here may reach a model hub.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# vLLM reads these from the environment, in this process and in every process it starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import vllm  # noqa: F401  (missing vLLM is a failure here, not a skip)

from services.nats_server import free_port
from services.settings import Settings
from tests.conftest import fast_settings
from tests.vllm.tiny_model import build

MODEL = "tiny"  # the name clients use, for dim's workers and for `vllm serve` alike
# Eager mode: a tiny model gains nothing from compiling.
ENGINE_ARGS: dict[str, Any] = {"enforce_eager": True}
MAX_MODEL_LEN = 2048


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, built once per test session."""
    return build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def module_settings(nats_url: str) -> Settings:
    """Fast settings in a namespace of the module's own, for services the module shares."""
    return fast_settings(nats_url, f"t{uuid.uuid4().hex[:12]}")


def vllm_settings(base: Settings, model: Path, **overrides: Any) -> Settings:
    """`base` for a worker serving the tiny model (as `tiny`) with the vllm engine."""
    return base.model_copy(
        update={
            "engine": "vllm",
            "models": (str(model),),
            "model_aliases": {MODEL: str(model)},
            "capacity": 16,
            "vllm_dtype": "bfloat16",
            "vllm_max_model_len": MAX_MODEL_LEN,
            "vllm_gpu_memory_utilization": 0.2,  # on a GPU; the CPU build sizes its KV cache above
            "vllm_engine_args": ENGINE_ARGS,
            # a model loading and compiling on two shared cores is slow to answer: a lost node
            # is one that misses several seconds of heartbeats, not a fraction of one
            "heartbeat_s": 1.0,
            "node_ttl_s": 8.0,
            "task_ack_wait_s": 5.0,
            "dispatch_timeout_s": 10.0,
            **overrides,
        }
    )


@contextlib.contextmanager
def vllm_server(model: Path, *, cpus: str | None = None) -> Iterator[str]:
    """vLLM's own OpenAI server (`vllm serve`) on a free loopback port; yields its base URL.

    Started as `python -m vllm.entrypoints.openai.api_server`: the `vllm` command looks up the
    metadata of a package named `vllm`, which the CPU build (`vllm-cpu`) does not have. `cpus`
    pins it (`taskset -c`). Its output is printed when the block ends.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.2",
    ]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_healthy(base, proc)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # with vLLM's engine processes
                proc.wait()
            out.seek(0)
            print(f"--- vllm serve (exit {proc.returncode}) ---")
            print(out.read().decode(errors="replace")[-20_000:])


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"vllm serve exited with {proc.returncode} while starting"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"vllm serve at {base} not healthy after {timeout_s}s")
