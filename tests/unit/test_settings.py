from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.settings import Settings


def test_settings_come_from_dim_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIM_MODELS", "a, org/b.1 ,")
    monkeypatch.setenv("DIM_CAPACITY", "7")
    s = Settings()
    assert s.models == ("a", "org/b.1")
    assert s.capacity == 7


def test_to_env_round_trips_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        namespace="prod",
        models=("m1", "m2"),
        capacity=3,
        data_dir=Path("x/y"),
        sim_seed=9,
        node_id="n-1",
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


@pytest.mark.parametrize(
    ("field", "value"), [("namespace", "a.b"), ("node_id", "has space"), ("capacity", 0)]
)
def test_bad_settings_are_refused_naming_the_problem(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]
