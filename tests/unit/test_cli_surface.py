"""The `dim` command as a person or a script meets it, with no server: help without heavy imports,
the version, one line for a refused setting, secrets masked, a closed pipe, narrow terminals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from typing import get_args

import pytest
from pydantic import SecretStr

from services.cli.masking import MASK, SECRET_SETTINGS
from services.settings import Settings
from services.table import table

# What `dim --help` must not import: each costs a noticeable part of a second, and none is needed
# to print help.
HEAVY = {
    "nats",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "litestar",
    "uvicorn",
    "opentelemetry",
    "vllm",
    "torch",
    "cryptography",
    "nkeys",
    "nacl",
    "uvloop",
    "httpx",
    "jwt",
    "argon2",
    "prometheus_client",
    "msgspec",
    "events",
    "projections",
    "gateway",
}

_HELP_OF_EVERY_COMMAND = """
import argparse, json, sys
from services.cli import main, parser

def helps(p, path):
    yield [*path, "--help"]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from helps(sub, [*path, name])

asked = list(helps(parser(), []))
for argv in asked:
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps({"asked": asked, "modules": sorted(sys.modules)}))
"""


def _env(**more: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DIM_")} | more


def dim(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`dim <args>` in a process of its own, with only the given ``DIM_*`` variables."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_of_every_command_imports_nothing_heavy() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _HELP_OF_EVERY_COMMAND],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    assert ["jobs", "--help"] in seen["asked"] and ["keys", "list", "--help"] in seen["asked"]
    loaded = set(seen["modules"])
    assert {m.split(".")[0] for m in loaded} & HEAVY == set()
    # of dim's own modules, only the parser's
    assert {m for m in loaded if m.startswith("services.")} <= {
        m for m in loaded if m.startswith("services.cli")
    }


def test_version_is_the_installed_package_s() -> None:
    run = dim("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"dim {version('dim')}"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DIM_CAPACITY", "lots", "expected an integer from 1 to 4096"),
        ("DIM_CAPACITY", "0", "expected an integer from 1 to 4096"),
        ("DIM_ENGINE", "tpu", "expected one of simulated, openai, vllm"),
        ("DIM_SIGNED_NODES", "maybe", "expected true or false"),
        ("DIM_HEARTBEAT_S", "-1", "expected a number > 0"),
        ("DIM_VLLM_ENGINE_ARGS", "{not json", "expected a JSON object"),
        ("DIM_NAMESPACE", "has space", "is not valid"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER names zipkin"),
    ],
)
def test_a_refused_setting_is_one_line_naming_it(variable: str, value: str, says: str) -> None:
    for command in (["settings"], ["jobs"]):
        run = dim(*command, **{variable: value})
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        line, *more = run.stderr.splitlines()
        assert more == []
        assert line.startswith(f"dim: {variable}")
        assert says in line
        assert run.stdout == ""


def test_a_refused_flag_is_named_as_one() -> None:
    run = dim("jobs", "--namespace", "has space")
    assert run.returncode == 2
    assert run.stderr.startswith("dim: DIM_NAMESPACE='has space' (from a flag): ")
    assert len(run.stderr.splitlines()) == 1


_SECRETS = {
    "DIM_JWT_SECRET": "jwt-secret-value-1234567890",
    "DIM_JWT_PREVIOUS_SECRETS": "old-secret-one,old-secret-two",
    "DIM_JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nprivate-key-body\n-----END PRIVATE KEY-----",
    "DIM_UPSTREAM_API_KEY": "sk-upstream-key-value",
    "DIM_NATS_USER": "alice",
    "DIM_NATS_PASSWORD": "nats-password-value",
    # a seed given where the path of its file belongs: masked for what it is
    "DIM_NATS_NKEY_SEED": "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU",
}
_URLS = {
    "DIM_UPSTREAM_URL": "https://bob:url-password@upstream.example/v1",
    "DIM_OTEL_ENDPOINT": "https://carol:otel-password@otel.example/v1/traces",
}


def _secret_words() -> list[str]:
    words = [v for k, v in _SECRETS.items() if k != "DIM_NATS_USER"]
    return [*words, "old-secret-one", "private-key-body", "url-password", "otel-password"]


def test_settings_mask_every_secret_in_the_table_and_in_json() -> None:
    env = _SECRETS | _URLS
    shown = dim("settings", **env)
    assert shown.returncode == 0, shown.stderr
    as_json = dim("settings", "--json", **env)
    assert as_json.returncode == 0, as_json.stderr
    for out in (shown.stdout, as_json.stdout):
        for word in _secret_words():
            assert word not in out
    values = json.loads(as_json.stdout)
    for variable in _SECRETS.keys() - {"DIM_NATS_USER"}:
        assert values[variable] == MASK, variable
        row = next(ln for ln in shown.stdout.splitlines() if ln.startswith(f"{variable} "))
        assert MASK in row
    assert values["DIM_NATS_USER"] == "alice"
    assert values["DIM_UPSTREAM_URL"] == "https://upstream.example/v1"
    assert values["DIM_CAPACITY"] == 32  # plain JSON values otherwise
    assert values["DIM_JWT_SECRET"] == MASK
    assert dim("settings", "--json").stdout.count('"DIM_JWT_SECRET": ""') == 1  # unset: empty
    assert set(values) == {Settings.variable(n) for n in Settings.model_fields}


def test_every_setting_named_as_a_secret_is_masked() -> None:
    """A new setting called like a secret must be masked (in SECRET_SETTINGS, or a SecretStr)."""
    for name, field in Settings.model_fields.items():
        if any(w in name for w in ("secret", "password", "api_key", "private_key", "credential")):
            secret_type = field.annotation is SecretStr or SecretStr in get_args(field.annotation)
            assert name in SECRET_SETTINGS or secret_type, name
    assert set(Settings.model_fields) >= SECRET_SETTINGS


def _into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """`dim <args>` whose reader has gone before it writes (as `dim ... | head -1` ends)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=_env(),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    for args in (["settings"], ["settings", "--json"]):
        run = _into_a_closed_pipe(*args)
        assert run.returncode == 141
        assert run.stderr == ""


def test_settings_fit_a_narrow_terminal_and_are_whole_in_a_pipe() -> None:
    for columns in (120, 80, 30):
        run = dim("settings", COLUMNS=str(columns))
        assert run.returncode == 0
        lines = run.stdout.splitlines()
        assert max(len(ln) for ln in lines) <= columns
        variables = tuple(f"{Settings.variable(n)} " for n in Settings.model_fields)
        records = ("VARIABLE  DIM_", "VARIABLE  OTEL_")  # a terminal too narrow for columns
        rows = sum(ln.startswith((*variables, *records)) for ln in lines)
        assert rows == len(Settings.model_fields)
    whole = dim("settings").stdout  # not a terminal, no COLUMNS: nothing cut, one row a setting
    assert "…" not in whole
    assert len(whole.splitlines()) == len(Settings.model_fields) + 1


def test_commands_explain_an_unreachable_server_in_one_line() -> None:
    run = dim("jobs", DIM_NATS_URL="nats://127.0.0.1:9")  # the discard port: nothing answers
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert "cannot reach NATS at nats://127.0.0.1:9" in line


def test_a_gateway_that_cannot_start_says_why_in_one_line() -> None:
    from services.nats_server import free_port

    port = str(free_port())
    key = "k" * 40
    unreachable = dim(
        "gateway", "--port", port, DIM_NATS_URL="nats://127.0.0.1:9", DIM_JWT_SECRET=key
    )
    no_key = dim("gateway", "--port", port, DIM_JWT_SECRET="short")
    for run, says in (
        (unreachable, "the gateway cannot start: cannot reach NATS at nats://127.0.0.1:9"),
        (no_key, "the gateway cannot start: DIM_JWT_SECRET must be set"),
    ):
        assert run.returncode != 0
        assert "Traceback" not in run.stderr
        assert says in run.stderr, run.stderr


ROWS = [
    ["01JA0000000000000000000001", "completed", "sim-small", "single", "a long error " * 8],
    ["01JA0000000000000000000002", "failed", "sim-large", "fanout", "short"],
]
HEADERS = ["JOB", "STATUS", "MODEL", "PATTERN", "ERROR"]


def test_a_table_fits_its_width_cutting_the_widest_column_first() -> None:
    out = table(HEADERS, ROWS, width=72).splitlines()
    assert max(len(ln) for ln in out) <= 72
    assert out[1].startswith("01JA0000000000000000000001  completed  sim-small  single")
    assert out[1].endswith("…") or out[1].endswith("~")
    assert table(HEADERS, ROWS, width=0) == table(HEADERS, ROWS, width=1000)  # nothing to cut


def test_a_table_drops_optional_columns_then_shows_records() -> None:
    out = table(HEADERS, ROWS, optional=(3, 4), width=60).splitlines()
    assert out[0].split() == ["JOB", "STATUS", "MODEL", "ERROR"]  # PATTERN went first
    out = table(HEADERS, ROWS, optional=(3, 4), width=48).splitlines()
    assert out[0].split() == ["JOB", "STATUS", "MODEL"]
    assert out[1].startswith("01JA0000000000000000000001  ")  # the id whole, to be copied
    assert max(len(ln) for ln in out) <= 48
    records = table(HEADERS, ROWS, optional=(3, 4), width=40).splitlines()
    assert max(len(ln) for ln in records) <= 40
    assert records[0].startswith("JOB ") and records[1].startswith("STATUS  ")
    assert "" in records  # the rows apart


def test_a_table_wraps_its_last_column_when_asked() -> None:
    out = table(HEADERS, ROWS, wrap=True, width=80).splitlines()
    assert max(len(ln) for ln in out) <= 80
    assert len(out) > 3
    text = " ".join(ln[len(out[0]) - len("ERROR") :].strip() for ln in out[1:-1])
    assert "a long error" in text
    assert (
        table(HEADERS, [["x\ny", "a\tb", "", "", ""]], width=0)
        .splitlines()[1]
        .startswith("x y  a b")
    )
