"""A real gateway's log lines: JSON when asked, the access log on by default, off when asked."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from services.up import child_env
from tests.mesh import wait_ready


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


async def _gateway_answers(
    settings: Settings, tmp_path: Path, key: str, **env: str
) -> tuple[list[str], str]:
    """Start a gateway, send it a few requests, stop it; its stderr lines and stdout."""
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    err, out = tmp_path / "stderr", tmp_path / "stdout"
    with err.open("wb") as e, out.open("wb") as o:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "gateway",
            env=child_env(s, **env),
            stdout=o,
            stderr=e,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                auth = {"Authorization": f"Bearer {key}", "X-Request-Id": "req-42"}
                r = await http.get("/v1/models?api_key=hush-hush", headers=auth)
                assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
                r = await http.get("/v1/jobs/nope", headers={"Authorization": "Bearer wrong"})
                assert r.status_code == 401 and r.headers["x-request-id"]
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return _lines(err), out.read_text()


async def test_json_logs_and_the_access_log_of_a_real_gateway(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    record, key = await create_key(
        bus, principal_id="ann", tenant="acme", roles=("member",), actor="t"
    )
    lines, _ = await _gateway_answers(
        settings,
        tmp_path,
        key,
        DIM_LOG_FORMAT="json",
        OTEL_TRACES_EXPORTER="console",  # spans to stdout; their ids on the log lines
    )
    docs = [json.loads(line) for line in lines]  # every line one JSON object
    for doc in docs:
        assert {"time", "level", "logger", "message", "role"} <= doc.keys(), doc
        assert doc["role"] == "gateway"
    assert any(d["logger"].startswith("uvicorn") for d in docs)  # the server's lines too
    access = [d for d in docs if d["logger"] == "dim.access"]
    models = next(d for d in access if d["path"] == "/v1/models")
    assert models["method"] == "GET" and models["status"] == 200
    assert models["request_id"] == "req-42" and models["duration_ms"] >= 0
    assert models["tenant"] == "acme" and models["key_id"] == record.key_id
    assert len(models["trace_id"]) == 32 and len(models["span_id"]) == 16
    refused = next(d for d in access if d["path"] == "/v1/jobs/nope")
    assert refused["status"] == 401 and "tenant" not in refused and refused["request_id"]
    text = "\n".join(lines)
    assert "hush-hush" not in text and "api_key=" not in text  # no query string
    assert key not in text and "Bearer" not in text  # no Authorization header


async def test_the_access_log_is_on_by_default_and_off_by_the_setting(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    _, key = await create_key(bus, principal_id="bo", tenant="acme", roles=("member",), actor="t")
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on, _ = await _gateway_answers(settings, tmp_path / "on", key)
    access = [line for line in on if " dim.access" in line or "GET /v1/models 200" in line]
    assert any("GET /v1/models 200" in line and "id=req-42" in line for line in access), on
    assert any("tenant=acme" in line for line in access)
    off, _ = await _gateway_answers(settings, tmp_path / "off", key, DIM_ACCESS_LOG="false")
    assert not any("GET /v1/models" in line for line in off), off
    assert any("Application startup complete" in line for line in off)  # it did log
