"""CORS is off unless origins are named; they come comma-separated from DIM_CORS_ORIGINS."""

from __future__ import annotations

import pytest

from gateway.cors import cors_config
from services.settings import Settings


def test_no_origins_no_cors() -> None:
    assert cors_config(Settings()) is None


def test_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIM_CORS_ORIGINS", "https://a.example, https://b.example:8443")
    settings = Settings()
    assert settings.cors_origins == ("https://a.example", "https://b.example:8443")
    config = cors_config(settings)
    assert config is not None
    assert config.allow_origins == ["https://a.example", "https://b.example:8443"]
    assert not config.allow_credentials
    assert "authorization" in config.allow_headers


@pytest.mark.parametrize("ttl", [0, 121])
def test_a_ticket_lives_at_most_two_minutes(ttl: float) -> None:
    """Redeeming a ticket counts in the rate-limit stream, which keeps a count three minutes."""
    with pytest.raises(ValueError, match="ws_ticket_ttl_s"):
        Settings(ws_ticket_ttl_s=ttl)
