"""The upstream overlay of infra/k8s run as its pods run, against a real nats-server secured with
the same `dim nats-config` directory: each process gets exactly its container's args and
environment as `kubectl kustomize` renders them, and the files of the Secrets and ConfigMaps its
pod mounts (as infra/k8s/secrets.sh makes them) where it mounts them, moved under a folder of its
own. The services answer their readiness probes; the worker joins, prints what approves it, is
approved as docs/deploy.md says (step 6), and serves a chat completion through the gateway.

What differs from a cluster, and why: one nats-server, not the chart's three (so `dim provision`
makes R1 streams; the pods' DIM_REPLICAS=3 then only warns), dialled at its own address (no
Service `nats` here, so the join bundle names this server); every process on this machine's
network, so each gets a free port where its pod has its own; the mounts under the test's folder;
the upstream a stand-in serving the worker's model (upstream.env is the operator's to set)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.nats_dir import NatsDir
from services.nats_server import EmbeddedNats, free_port
from services.process import connect
from services.settings import Settings
from tests import k8s_render
from tests.k8s_render import KUBECTL, NO_KUBECTL

pytestmark = [pytest.mark.slow, pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)]

DIM = str(Path(sys.executable).with_name("dim"))
WAIT_S = 90.0  # for every service to be ready, on a busy machine

Doc = dict[str, Any]


def _data(docs: list[Doc]) -> dict[tuple[str, str], dict[str, bytes]]:
    """(kind, name) -> each key's bytes, of every Secret and ConfigMap in `docs`."""
    out: dict[tuple[str, str], dict[str, bytes]] = {}
    for d in docs:
        if d["kind"] == "Secret":
            out[("Secret", d["metadata"]["name"])] = {
                k: base64.b64decode(v) for k, v in d.get("data", {}).items()
            }
        elif d["kind"] == "ConfigMap":
            out[("ConfigMap", d["metadata"]["name"])] = {
                k: v.encode() for k, v in d.get("data", {}).items()
            }
    return out


def _pod(
    workload: Doc, data: dict[tuple[str, str], dict[str, bytes]], root: Path
) -> tuple[list[str], dict[str, str], dict[int, int]]:
    """The args, environment and (container port -> port here) of `workload`'s one container,
    its mounts written under `root`."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pod_name = workload["metadata"]["name"] + ("-0" if workload["kind"] == "StatefulSet" else "-x")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    moved: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        where = root / mount["mountPath"].lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        moved[mount["mountPath"]] = str(where)
        volume = volumes.get(mount["name"], {})
        source = (
            ("Secret", volume["secret"]["secretName"])
            if "secret" in volume
            else ("ConfigMap", volume["configMap"]["name"])
            if "configMap" in volume
            else None
        )
        for key, value in data.get(source, {}).items() if source else ():
            (where / key).write_bytes(value)

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= {
            k: v.decode() for k, v in data[("ConfigMap", source["configMapRef"]["name"])].items()
        }
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            secret = data.get(("Secret", key["name"]))
            if secret is None and key.get("optional"):
                continue  # an optional Secret not made: the variable is unset, as in the pod
            assert secret is not None, f"Secret {key['name']} is not made"
            env[var["name"]] = secret[key["key"]].decode()

    def here(value: str) -> str:
        for mount_path, moved_to in moved.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                return moved_to + value[len(mount_path) :]
        return value

    env = {name: here(value) for name, value in env.items()}
    args = [here(arg) for arg in container["args"]]
    ports = {p["containerPort"]: free_port() for p in container["ports"]}
    for name in ("DIM_GATEWAY_PORT", "DIM_METRICS_PORT"):
        if name in env:
            env[name] = str(ports.get(int(env[name]), free_port()))
    return args, env, ports


def _ready(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


MODEL_TEXT = "hello from the upstream"


class _Upstream(BaseHTTPRequestHandler):
    """The smallest OpenAI-compatible server the openai engine takes: its models, and one
    streamed chat answer."""

    model = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]})
        self._send(200, "application/json", body.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": self.model}
        events = [
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": MODEL_TEXT},
                        "finish_reason": None,
                    }
                ],
            },
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {
                **chunk,
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
        ]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", text.encode())

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _wait_for(
    what: str, check: Callable[[], object], proc: subprocess.Popen[bytes], log: Path
) -> Any:
    """`check()`'s first truthy answer within WAIT_S, while `proc` runs."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited while waiting for {what}:\n{log.read_text()[-3000:]}"
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {WAIT_S} s:\n{log.read_text()[-3000:]}")


# The orchestrator and the batch runner serve their probes once every process has the metrics
# server of issue 19; until then (nothing on their probe port) they show they started otherwise.
WITHOUT_PROBES = {"dim-orchestrator", "dim-batcher"}


def _started_otherwise(
    status: dict[str, int | None],
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]],
    admin: dict[str, str],
) -> bool:
    """Every process is ready but those of WITHOUT_PROBES that serve no probe, and those are
    running: the orchestrator's durable consumer on JOBS exists (it connected as its identity
    and made it), and the batch runner says it loaded the batch views."""
    waiting = {n for n, s in status.items() if s != 200}
    if not waiting or not waiting <= WITHOUT_PROBES or any(status[n] is not None for n in waiting):
        return False
    if "dim-batcher" in waiting and "batch runner: " not in procs["dim-batcher"][1].read_text():
        return False
    if "dim-orchestrator" in waiting:
        return _consumer_exists(admin, "dim_JOBS", "orchestrator-dim-orchestrator-0")
    return True


def _consumer_exists(admin: dict[str, str], stream: str, durable: str) -> bool:
    """Whether `stream` has the durable consumer `durable` (asked as the admin identity)."""
    settings = Settings(
        nats_url=admin["DIM_NATS_URL"],
        nats_tls_ca=admin["DIM_NATS_TLS_CA"],
        nats_nkey_seed=admin["DIM_NATS_NKEY_SEED"],
        nats_inbox_prefix=admin["DIM_NATS_INBOX_PREFIX"],
    )

    async def ask() -> bool:
        bus = await connect(settings, "dim-k8s-test")
        try:
            return await bus.backlog(stream, durable) is not None
        finally:
            await bus.close()

    return asyncio.run(ask())


@pytest.mark.timeout(300)
def test_the_services_start_as_their_pods_do(tmp_path: Path) -> None:
    nats_dir = k8s_render.security_dir(tmp_path / "nats-dim")
    tls = nats_dir / "tls"
    server = EmbeddedNats(
        nats_dir,
        port=0,
        name="dim-k8s-test",
        extra=NatsDir(nats_dir).server_config(tls / "server.pem", tls / "server-key.pem"),
    )
    docs = k8s_render.overlay("upstream")
    data = _data(docs + k8s_render.secrets(nats_dir))
    data[("Secret", "dim-jwt")] = {"secret": secrets.token_hex(32).encode()}  # docs/deploy.md
    url = server.start()
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    stack = contextlib.ExitStack()
    try:
        # docs/deploy.md, step 4: the streams, as the admin identity (R1: one server here)
        admin = {
            **os.environ,
            "DIM_NATS_URL": url,
            "DIM_NATS_TLS_CA": str(tls / "ca.pem"),
            "DIM_NATS_NKEY_SEED": str(nats_dir / "ids" / "admin.nk"),
            "DIM_NATS_INBOX_PREFIX": "_I.admin",
        }
        done = subprocess.run(
            [DIM, "provision"], env=admin, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr.decode()

        probes: dict[str, tuple[int, str]] = {}
        for workload in docs:
            if workload["kind"] not in ("Deployment", "StatefulSet"):
                continue
            name = workload["metadata"]["name"]
            if name.startswith("dim-worker"):
                continue  # approval and an engine: see the module's text
            root = tmp_path / "pods" / name
            args, env, ports = _pod(workload, data, root)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "DIM_NATS_URL": url}
            log = root / "log"
            with log.open("wb") as out:
                proc = subprocess.Popen([DIM, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
            procs[name] = (proc, log)
            (container,) = workload["spec"]["template"]["spec"]["containers"]
            probe = container["readinessProbe"]["httpGet"]
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            probes[name] = (ports[named[probe["port"]]], probe["path"])

        status: dict[str, int | None] = {}
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for name, (port, path) in probes.items():
                proc, log = procs[name]
                assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
                status[name] = _ready(port, path)
            if all(s == 200 for s in status.values()) or _started_otherwise(status, procs, admin):
                break
            time.sleep(0.5)
        not_ready = {n: (s, procs[n][1].read_text()[-2000:]) for n, s in status.items() if s != 200}
        assert not not_ready or _started_otherwise(status, procs, admin), not_ready

        # docs/deploy.md, step 6: a worker pod joins, says what approves it, an admin runs that
        # against the security directory (which reloads this server); then it serves.
        (worker,) = [
            d
            for d in docs
            if d["metadata"]["name"] == "dim-worker-upstream" and d["kind"] == "StatefulSet"
        ]
        # the bundle (ConfigMap dim-join) and the upstream (upstream.env) are the operator's to
        # name: here this server, and a stand-in upstream serving the worker's model
        bundle = subprocess.run(
            [DIM, "nodes", "bundle", "--nats-dir", str(nats_dir), "--url", url],
            env=admin,
            capture_output=True,
            timeout=60,
            check=True,
        )
        data[("ConfigMap", "dim-join")] = {"join.txt": bundle.stdout}
        root = tmp_path / "pods" / "dim-worker-upstream-0"
        args, env, _ = _pod(worker, data, root)
        model = args[args.index("--model") + 1]
        _Upstream.model = model
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
        stack.callback(upstream.server_close)
        stack.callback(upstream.shutdown)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        env["DIM_UPSTREAM_URL"] = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
        log = root / "log"
        with log.open("wb") as out:
            proc = subprocess.Popen([DIM, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        procs["dim-worker-upstream-0"] = (proc, log)
        approve = _wait_for(
            "approval command",
            lambda: re.search(r"(dim nodes approve \S+ \S+ --models \S+)", log.read_text()),
            proc,
            log,
        )
        command = [DIM, *approve.group(1).split()[1:], "--nats-dir", str(nats_dir)]
        assert command[3] == "dim-worker-upstream-0"  # its node id is its pod's name
        done = subprocess.run(command, env=admin, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()
        _wait_for("admission", lambda: "admitted" in log.read_text(), proc, log)
        # a caller's key, then a chat completion through the gateway, served by that worker
        made = subprocess.run(
            [DIM, "keys", "create", "--name", "k8s-test"],
            env=admin,
            capture_output=True,
            timeout=60,
            check=True,
        )
        key = re.search(r"dim_\S+", made.stdout.decode())
        assert key, made.stdout.decode()
        gateway = probes["dim-gateway"][0]

        def answer() -> str | None:
            with contextlib.suppress(OSError):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{gateway}/v1/chat/completions",
                    data=json.dumps(
                        {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    ).encode(),
                    headers={
                        "Authorization": f"Bearer {key.group(0)}",
                        "Content-Type": "application/json",
                    },
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    return str(json.load(response)["choices"][0]["message"]["content"])
            return None

        assert _wait_for("completion", answer, proc, log) == MODEL_TEXT
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stack.close()
        server.stop()
