"""The nats-server configurations we ship are ones nats-server accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.nats_server import EmbeddedNats, nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "infra" / "nats").rglob("*.conf"))


@pytest.mark.parametrize("conf", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_shipped_config_is_valid(conf: Path) -> None:
    out = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = conf.read_text()
    assert "sync_interval: always" in text  # the durable setting, documented in each file


def test_embedded_config_is_valid(tmp_path: Path) -> None:
    conf = tmp_path / "embedded.conf"
    conf.write_text(EmbeddedNats(tmp_path, port=4999, sync_always=True).config())
    out = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 4
