"""End to end as a new user: `dim up` as a real process, then the `dim` commands against it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.nats_server import free_port


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DIM_")} | {
        "PYTHONUNBUFFERED": "1",
        "DIM_METRICS_PORT": "0",  # not 9400 and on: other tests may run `dim up` beside this one
    }


@dataclass(frozen=True)
class System:
    """A running `dim up`: its NATS URL and its gateway's base URL."""

    nats_url: str
    gateway: str
    pid: int  # of `dim up`
    data_dir: Path  # where `dim up` keeps the store, the TLS files and the identities


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    """`dim up` with nats-server and the gateway on free ports."""
    port, gateway_port = free_port(), free_port()
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--nats-port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            "2",
            "--sim-ttft-ms",
            "5",
            "--sim-tokens-per-s",
            "400",
            "--gateway-port",
            str(gateway_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.1)
        assert "ready: 2/2 simulated workers" in (tmp_path / "up.log").read_text()
        yield System(
            f"nats://127.0.0.1:{port}",
            f"http://127.0.0.1:{gateway_port}",
            proc.pid,
            tmp_path / "data",
        )
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0
        out = (tmp_path / "up.log").read_text()
        assert "draining workers" in out
        assert "nats-server stopped; bye" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "up.log").read_text())


def _target(target: System | str) -> dict[str, str]:
    if isinstance(target, str):
        return {"DIM_NATS_URL": target}
    return {"DIM_NATS_URL": target.nats_url, "DIM_DATA_DIR": str(target.data_dir)}


def dim(target: System | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`dim <args>` against a running system (as on its machine: the admin identity is found in
    its data directory) or a bare NATS URL; `env`: more variables (``COLUMNS``, say)."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=_env() | _target(target) | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dim_into_a_closed_pipe(target: System, *args: str) -> subprocess.CompletedProcess[str]:
    """`dim <args>` whose reader has gone before it writes, as when `dim jobs | head -1` ends."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=_env() | _target(target),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)


def test_a_new_user_submits_a_job_and_reads_its_history(system: System) -> None:
    url = system
    run = dim(url, "submit", "hello", "--model", "sim-small")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) > 5  # the streamed answer
    m = re.search(
        r"completed \(stop\)\s+prompt 1 \+ completion (\d+) = (\d+) tokens\s+job (\w+)", run.stderr
    )
    assert m, run.stderr
    job_id = m.group(3)

    shown = dim(url, "job", job_id)
    assert shown.returncode == 0, shown.stderr
    order = [
        "job.submitted",
        "job.planned",
        "task.started",
        "task.completed",
        "job.completed",
    ]
    positions = [shown.stdout.index(t) for t in order]
    assert positions == sorted(positions)
    assert "status   completed" in shown.stdout
    assert run.stdout.strip() in shown.stdout

    nodes = dim(url, "nodes")
    assert nodes.returncode == 0
    header, *rows = nodes.stdout.splitlines()
    assert header.split()[-1] == "VERIFIED"
    # Each worker signs its record with its NATS key, the one `dim up` enrolled for it.
    assert {r.split()[0]: r.split()[-1] for r in rows} == {"sim-1": "yes", "sim-2": "yes"}

    deadline = time.monotonic() + 10
    while job_id not in (listed := dim(url, "jobs")).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_id in listed.stdout
    assert "completed" in listed.stdout

    missing = dim(url, "submit", "hi", "--model", "nope")
    assert missing.returncode == 1
    assert "failed (model_not_served): no live node serves model 'nope'" in missing.stderr

    check = dim(url, "projections", "rebuild", "--check")
    assert check.returncode == 0 and "identical" in check.stdout, check.stdout + check.stderr


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


@pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH") or not Path(f"/proc/{os.getpid()}/task").exists(),
    reason="Linux scheduling policies, read from /proc",
)
def test_every_process_dim_up_starts_runs_under_the_batch_policy(system: System) -> None:
    """services/cpu_policy.py: no process of the mesh preempts another when a message wakes it."""
    commands = {}
    for pid in [system.pid, *_descendants(system.pid)]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        commands[pid] = cmdline
        for task in Path(f"/proc/{pid}/task").iterdir():
            assert os.sched_getscheduler(int(task.name)) == os.SCHED_BATCH, (cmdline, task.name)
    roles = " ".join(commands.values())
    for role in ("nats-server", "cli up", "cli gateway", "cli orchestrator", "cli projector"):
        assert role in roles, roles
    assert roles.count("cli worker") == 2, roles


def test_commands_explain_an_unreachable_server() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    for args in (["jobs"], ["nodes", "--json"], ["keys", "list"], ["usage"]):
        run = dim(url, *args)
        assert run.returncode == 1
        assert "Traceback" not in run.stderr
        (line,) = run.stderr.splitlines()  # one line, naming the URL and what to do
        assert f"cannot reach NATS at {url}" in line
        assert "dim up" in line


# every command that reads, with the arguments it needs ({job}: a job's id)
READS = (
    ("jobs",),
    ("job", "{job}"),
    ("keys", "list"),
    ("nodes",),
    ("nodes", "approvals"),
    ("models",),
    ("usage",),
    ("usage", "--by", "key,model"),
    ("audit",),
    ("settings",),
)


def test_read_commands_answer_json_fit_a_narrow_terminal_and_stop_at_a_closed_pipe(
    system: System,
) -> None:
    up_log = (system.data_dir.parent / "up.log").read_text()  # and `dim up` said how it started
    for said in ("started 6 processes: orchestrator, projector, batcher, gateway, sim-1, sim-2",):
        assert said in up_log
    for worker in ("sim-1", "sim-2"):
        assert f"worker {worker} live, serving sim-small" in up_log
    assert "gateway answering" in up_log

    run = dim(system, "submit", "hello", "--model", "sim-small", "--max-tokens", "5")
    assert run.returncode == 0, run.stderr
    job_id = run.stderr.split()[-1]
    key_id = _key(system, "--name", "a-rather-long-name-for-a-key-" * 3).split("_")[1]
    deadline = time.monotonic() + 10
    while not json.loads(dim(system, "usage", "--json").stdout):
        assert time.monotonic() < deadline, "no usage recorded"
        time.sleep(0.2)

    docs = {}
    for command in READS:
        args = [a.format(job=job_id) for a in command]
        run = dim(system, *args, "--json")
        assert run.returncode == 0, (args, run.stderr)
        docs[command[:2]] = json.loads(run.stdout)  # one JSON document
    assert job_id in {j["job_id"] for j in docs["jobs",]}
    assert docs["job", "{job}"]["job"]["status"] == "completed"
    assert docs["job", "{job}"]["events"][-1]["type"] == "job.completed"
    assert key_id in {k["key_id"] for k in docs["keys", "list"]}
    assert all("secret" not in field for k in docs["keys", "list"] for field in k)
    assert {n["node_id"]: n["verified"] for n in docs["nodes",]} == {"sim-1": True, "sim-2": True}
    # dim up approves its own workers' keys
    assert {a["node_id"] for a in docs["nodes", "approvals"]} == {"sim-1", "sim-2"}
    (model,) = docs["models",]
    assert model["model"] == "sim-small" and model["nodes"] == ["sim-1", "sim-2"]
    assert model["capacity"] == 64 and model["engines"] == ["simulated"]
    assert sum(u["requests"] for u in docs["usage",]) >= 1
    assert {r["model"] for r in docs["usage", "--by"]} == {"sim-small"}
    assert docs["audit",]["ok"] is True and docs["audit",]["completed"] >= 1
    assert docs["settings",]["DIM_NATS_URL"] == system.nats_url

    for command in READS:
        args = [a.format(job=job_id) for a in command]
        wide = dim(system, *args)
        assert wide.returncode == 0, (args, wide.stderr)
        for columns in (72, 40):
            narrow = dim(system, *args, COLUMNS=str(columns))
            assert narrow.returncode == 0, (args, narrow.stderr)
            assert max(map(len, narrow.stdout.splitlines())) <= columns, (args, narrow.stdout)
    listed = dim(system, "jobs", COLUMNS="72").stdout
    assert job_id in listed  # the id whole, to be copied

    for command in (("jobs",), ("nodes",), ("job", job_id), ("settings",)):
        run = dim_into_a_closed_pipe(system, *command)
        assert run.returncode == 141, run.stderr
        assert run.stderr == ""


def _key(system: System, *flags: str) -> str:
    run = dim(system, "keys", "create", *flags)
    assert run.returncode == 0, run.stderr
    assert "shown only now" in run.stderr
    return run.stdout.strip()


def test_the_openai_sdk_works_against_the_gateway(system: System) -> None:
    import openai

    # Clients are closed explicitly: a socket left to the garbage collector warns at a random
    # later moment, in whatever test runs then.
    with openai.OpenAI(
        base_url=f"{system.gateway}/v1", api_key=_key(system, "--name", "sdk")
    ) as client:
        assert [m.id for m in client.models.list()] == ["sim-small"]

        whole = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}], max_tokens=7
        )
        assert whole.choices[0].finish_reason == "length"
        assert whole.usage is not None and whole.usage.completion_tokens == 7
        assert whole.choices[0].message.content

        parts: list[str] = []
        usage = None
        for chunk in client.chat.completions.create(
            model="sim-small",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        assert len(parts) > 2  # it really streamed
        assert (
            usage is not None
            and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        )
        # The same prompt and model give the same text, streamed or not (deterministic engine).
        again = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hello"}]
        )
        assert "".join(parts) == again.choices[0].message.content

        text = client.completions.create(model="sim-small", prompt="once upon", max_tokens=4)
        assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 4  # type: ignore[union-attr]

        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
        with pytest.raises(openai.AuthenticationError):
            _forged_models(system.gateway)


def _forged_models(gateway: str) -> None:
    import openai

    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="dim_forged") as forged:
        forged.models.list()


def test_a_revoked_key_is_refused(system: System) -> None:
    import httpx

    key = _key(system)
    auth = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 5
    while httpx.get(f"{system.gateway}/v1/models", headers=auth).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    key_id = key.split("_")[1]
    listed = dim(system, "keys", "list")
    assert key_id in listed.stdout and key.split("_")[2] not in listed.stdout  # never the secret
    assert dim(system, "keys", "revoke", key_id).returncode == 0
    revoked = time.monotonic()
    while httpx.get(f"{system.gateway}/v1/models", headers=auth).status_code != 401:
        assert time.monotonic() - revoked < 1.0, "revocation took longer than a second"
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize("role", ["orchestrator", "gateway"])
def test_a_service_started_on_its_own_puts_itself_under_the_batch_policy(
    nats_url: str, namespace: str, role: str
) -> None:
    """Not only what `dim up` starts: each `dim <service>` sets the policy itself (it inherits
    the default one from whatever started it)."""
    env = _env() | {
        "DIM_NATS_URL": nats_url,
        "DIM_NAMESPACE": namespace,
        "DIM_JWT_SECRET": "x" * 32,
        "DIM_GATEWAY_PORT": str(free_port()),
    }
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # so the child does not inherit it
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", role],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while os.sched_getscheduler(proc.pid) != os.SCHED_BATCH:
            assert proc.poll() is None, f"dim {role} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"dim {role} still runs the default policy"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_bus_of_dim_up_refuses_an_anonymous_client_and_speaks_tls(system: System) -> None:
    tls = system.data_dir / "nats" / "tls"
    tries = (  # in a process of its own: nats-py leaves a refused connection's socket open
        "import asyncio, ssl, sys, nats\n"
        "async def main():\n"
        "    ca = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None\n"
        "    await nats.connect(sys.argv[1], tls=ca, allow_reconnect=False)\n"
        "asyncio.run(main())\n"
    )

    def anonymous(ca: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", tries, system.nats_url, ca],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode != 0
        return run.stderr

    assert "Authorization Violation" in anonymous(str(tls / "ca.pem"))  # TLS, no identity
    assert "CERTIFICATE_VERIFY_FAILED" in anonymous("")  # not dim up's CA: no TLS session at all
    ids = system.data_dir / "nats" / "ids"
    for secret in [tls / "server-key.pem", tls / "ca-key.pem", *ids.glob("*.nk")]:
        assert secret.stat().st_mode & 0o077 == 0, secret  # readable by its owner only
    assert {p.stem for p in ids.glob("*.nk")} >= {"admin", "gateway", "w-sim-1", "w-sim-2"}


_HOLD = (  # a connection as the joined node, held open: the server must close it on revocation
    "import asyncio, ssl, sys, nats\n"
    "async def main():\n"
    "    cut = asyncio.Event()\n"
    "    async def gone(): cut.set()\n"
    "    tls, seed = ssl.create_default_context(cafile=sys.argv[2]), sys.argv[3]\n"
    "    nc = await nats.connect(sys.argv[1], tls=tls, nkeys_seed=seed, disconnected_cb=gone,\n"
    "                            inbox_prefix=sys.argv[4], allow_reconnect=False)\n"
    "    print('up', flush=True)\n"
    "    await asyncio.wait_for(cut.wait(), 30)\n"
    "    print('cut off', flush=True)\n"
    "    try:\n"
    "        await nats.connect(sys.argv[1], tls=tls, nkeys_seed=seed, allow_reconnect=False)\n"
    "    except Exception as e:\n"
    "        print('refused:', e, flush=True)\n"
    "asyncio.run(main())\n"
)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in (out := path.read_text()):
        assert proc.poll() is None, out
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    return out


def test_a_node_on_another_host_joins_serves_and_is_cut_off_when_revoked(
    system: System, tmp_path: Path
) -> None:
    import openai

    from services.nats_auth import inbox_prefix

    bundle = tmp_path / "join.txt"
    made = dim(system, "nodes", "bundle", "--out", str(bundle))
    assert made.returncode == 0, made.stderr
    assert bundle.read_text().startswith("dimjoin1:")

    # "Another host": its own directory and environment, nothing of the server's machine but
    # the bundle (no DIM_* settings, no data directory of `dim up`).
    host = tmp_path / "gpu-host"
    host.mkdir()
    log_path = host / "worker.log"
    log = log_path.open("wb")
    join = ["--join", str(bundle), "--node-id", "remote-1", "--models", "sim-remote"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", *join],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env() | {"PYTHONPATH": str(Path.cwd())},
        cwd=host,
    )
    hold = None
    try:
        out = _wait_for(log_path, "waiting for it", worker)
        approve = re.search(r"dim nodes approve remote-1 (U[A-Z0-9]{55}) --models sim-remote", out)
        assert approve, out  # the one command that admits it
        node_key = approve.group(1)
        seed = host / ".dim" / "node" / "w-remote-1.nk"
        assert seed.stat().st_mode & 0o077 == 0  # its key, made on its first start, its own
        listed = json.loads(dim(system, "nodes", "--json").stdout)
        assert "remote-1" not in {n["node_id"] for n in listed}  # refused until approved

        run = dim(system, "nodes", "approve", "remote-1", node_key, "--models", "sim-remote")
        assert run.returncode == 0, run.stderr
        assert "reloaded" in run.stderr
        _wait_for(log_path, "serving sim-remote", worker)

        with openai.OpenAI(
            base_url=f"{system.gateway}/v1", api_key=_key(system, "--name", "remote")
        ) as client:
            answer = client.chat.completions.create(
                model="sim-remote", messages=[{"role": "user", "content": "hello"}], max_tokens=5
            )
            assert answer.usage is not None and answer.usage.completion_tokens == 5
            listed = json.loads(dim(system, "nodes", "--json").stdout)
            remote = next(n for n in listed if n["node_id"] == "remote-1")
            assert remote["verified"] is True  # its record signed by the key approved

            hold = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _HOLD,
                    system.nats_url,
                    str(host / ".dim" / "node" / "ca.pem"),
                    str(seed),
                    inbox_prefix("w-remote-1"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert hold.stdout is not None and hold.stdout.readline().strip() == "up"

            run = dim(system, "nodes", "revoke", "remote-1")
            assert run.returncode == 0, run.stderr
            assert "revoked node remote-1" in run.stderr
            assert hold.wait(30) == 0  # the server closed the node's connection at once
            assert "refused: nats: 'Authorization Violation'" in hold.stdout.read()  # no more
            _wait_for(log_path, "no longer admits this client", worker)
            listed = json.loads(dim(system, "nodes", "--json").stdout)
            assert "remote-1" not in {n["node_id"] for n in listed}
            with pytest.raises(openai.NotFoundError) as gone:
                client.chat.completions.create(
                    model="sim-remote", messages=[{"role": "user", "content": "hi"}]
                )
            assert gone.value.body["code"] == "model_not_found"  # type: ignore[index]
            assert worker.poll() is None  # still asking; an approval would let it back in
    finally:
        for proc in (worker, hold):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        if hold is not None and hold.stdout is not None:
            hold.stdout.close()
        log.close()
        print(log_path.read_text())
