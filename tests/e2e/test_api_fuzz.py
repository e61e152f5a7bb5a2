"""Schemathesis over every operation of the gateway's OpenAPI document, against real processes:
no server error, and every answer as the document declares it (status, content type, headers,
body schema, authentication). Bounded: 10 examples an operation, a fixed seed (a longer run:
`DIM_FUZZ_EXAMPLES=300 ./dev test tests/e2e/test_api_fuzz.py`).

Two checks are left out, for reasons the schema cannot carry: `positive_data_acceptance` (a
schema-valid request may still be refused for what it names — a model no live node serves,
another principal's key, a registration while it is closed) and `allow_header_conformance`
(Litestar answers OPTIONS with the methods of the one route it matched)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import spawn, wait_ready

EXAMPLES = int(os.environ.get("DIM_FUZZ_EXAMPLES", "10"))


@pytest.mark.timeout(120 + 3 * EXAMPLES)
async def test_every_operation_answers_as_its_schema_says(bus: Bus, settings: Settings) -> None:
    port = free_port()
    s = settings.model_copy(
        update={  # fuzz the operations, not the rate limits
            "gateway_port": port,
            "rate_limit_rpm": 0,
            "tenant_rate_limit_rpm": 0,
            "auth_rpm": 0,
        }
    )
    _, key = await create_key(bus, principal_id="fuzz", tenant="acme", roles=("admin",), actor="t")
    schemathesis = Path(sys.executable).with_name("schemathesis")  # the dev dependency's CLI
    assert schemathesis.exists(), "schemathesis is a dev dependency: ./dev test installs it"
    with (
        spawn(s, "orchestrator"),
        spawn(s, "projector"),
        spawn(s, "worker", DIM_NODE_ID="w1"),
        spawn(s, "gateway"),
    ):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        run = await asyncio.to_thread(
            subprocess.run,
            [
                str(schemathesis),
                "run",
                f"{base}/openapi/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance,allow_header_conformance",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
