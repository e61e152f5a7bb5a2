"""The upstream overlay of infra/k8s run as its pods run, against a real nats-server secured with
the same `dim nats-config` directory: each process gets exactly its container's args and
environment as `kubectl kustomize` renders them, and the files of the Secrets and ConfigMaps its
pod mounts (as infra/k8s/secrets.sh makes them) where it mounts them (tests/k8s_pods.py). The
services answer their readiness probes; the worker joins, prints what approves it, is approved as
docs/deploy.md says (step 6), and serves a chat completion through the gateway.

What differs from a cluster, and why: one nats-server, not the chart's three (so `dim provision`
makes R1 streams; the pods' DIM_REPLICAS=3 then only warns), dialled at its own address (no
Service `nats` here, so the join bundle names this server); every process on this machine's
network, so each gets a free port where its pod has its own; the mounts under the test's folder;
the upstream a stand-in serving the worker's model (upstream.env is the operator's to set)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.nats_dir import NatsDir
from services.nats_server import EmbeddedNats
from tests import k8s_render
from tests.k8s_pods import DIM, WAIT_S, Files, files_of, materialize, probe, start, wait_for
from tests.k8s_render import KUBECTL, NO_KUBECTL

pytestmark = [pytest.mark.slow, pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)]

MODEL_TEXT = "hello from the upstream"


Doc = dict[str, Any]


@dataclass
class Mesh:
    """The server, the admin's settings, and the services running as their pods."""

    url: str
    nats_dir: Path
    admin: dict[str, str]
    docs: list[Doc]
    files: Files
    root: Path
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)
    probes: dict[str, tuple[int, str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("k8s")
    nats_dir = k8s_render.security_dir(tmp / "nats-dim")
    tls = nats_dir / "tls"
    server = EmbeddedNats(
        nats_dir,
        port=0,
        name="dim-k8s-test",
        extra=NatsDir(nats_dir).server_config(tls / "server.pem", tls / "server-key.pem"),
    )
    docs = k8s_render.overlay("upstream")
    files = files_of(docs + k8s_render.secrets(nats_dir))
    files[("Secret", "dim-jwt")] = {"secret": secrets.token_hex(32).encode()}  # docs/deploy.md
    url = server.start()
    admin = {  # docs/deploy.md, step 4
        **os.environ,
        "DIM_NATS_URL": url,
        "DIM_NATS_TLS_CA": str(tls / "ca.pem"),
        "DIM_NATS_NKEY_SEED": str(nats_dir / "ids" / "admin.nk"),
        "DIM_NATS_INBOX_PREFIX": "_I.admin",
    }
    mesh = Mesh(url, nats_dir, admin, docs, files, tmp / "pods")
    try:
        done = subprocess.run([DIM, "provision"], env=admin, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        for workload, pod in k8s_render.pod_specs(docs):
            name = workload["metadata"]["name"]
            if name.startswith("dim-worker"):
                continue  # test_a_worker_pod_joins_is_approved_and_serves
            args, env, ports = materialize(workload, files, mesh.root / name)
            log = mesh.root / name / "log"
            mesh.procs[name] = (start(args, {**env, "DIM_NATS_URL": url}, log), log)
            (container,) = pod["spec"]["containers"]
            get = container["readinessProbe"]["httpGet"]
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            mesh.probes[name] = (ports[named[get["port"]]], get["path"])
        yield mesh
    finally:
        for proc, _ in mesh.procs.values():
            proc.terminate()
        for proc, _ in mesh.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop()


@pytest.mark.timeout(300)
def test_the_services_answer_their_probes(mesh: Mesh) -> None:
    status: dict[str, int | None] = {}
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for name, (port, path) in mesh.probes.items():
            proc, log = mesh.procs[name]
            assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            status[name] = probe(port, path)
        if all(s == 200 for s in status.values()):
            break
        time.sleep(0.5)
    logs = {n: (s, mesh.procs[n][1].read_text()[-2000:]) for n, s in status.items() if s != 200}
    assert not logs
    assert set(status) == {"dim-gateway", "dim-orchestrator", "dim-projector", "dim-batcher"}


class _Upstream(BaseHTTPRequestHandler):
    """The smallest OpenAI-compatible server the openai engine takes: its models, and one
    streamed chat answer."""

    model = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]})
        self._send("application/json", body.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": self.model}
        delta = {"role": "assistant", "content": MODEL_TEXT}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**chunk, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        ]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send("text/event-stream", text.encode())

    def _send(self, kind: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.timeout(300)
def test_a_worker_pod_joins_is_approved_and_serves(mesh: Mesh) -> None:
    (worker,) = [
        d
        for d in mesh.docs
        if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "dim-worker-upstream"
    ]
    # the bundle (ConfigMap dim-join) and the upstream (upstream.env) are the operator's to
    # name: here this server, and a stand-in upstream serving the worker's model
    bundle = subprocess.run(
        [DIM, "nodes", "bundle", "--nats-dir", str(mesh.nats_dir), "--url", mesh.url],
        env=mesh.admin,
        capture_output=True,
        timeout=60,
        check=True,
    )
    files = {**mesh.files, ("ConfigMap", "dim-join"): {"join.txt": bundle.stdout}}
    root = mesh.root / "dim-worker-upstream-0"
    args, env, ports = materialize(worker, files, root)
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    get = container["readinessProbe"]["httpGet"]
    model = args[args.index("--model") + 1]
    _Upstream.model = model
    with contextlib.ExitStack() as stack:
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
        stack.callback(upstream.server_close)
        stack.callback(upstream.shutdown)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        env["DIM_UPSTREAM_URL"] = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
        log = root / "log"
        proc = start(args, env, log)
        mesh.procs["dim-worker-upstream-0"] = (proc, log)
        # docs/deploy.md, step 6: the pod says what approves it; the admin runs that against
        # the security directory, which reloads this server
        said = wait_for(
            "approval command",
            lambda: re.search(r"(dim nodes approve \S+ \S+ --models [^\s\\\"]+)", log.read_text()),
            proc,
            log,
        )
        command = [DIM, *said.group(1).split()[1:], "--nats-dir", str(mesh.nats_dir)]
        assert command[3] == "dim-worker-upstream-0"  # its node id is its pod's name
        done = subprocess.run(command, env=mesh.admin, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        wait_for("admission", lambda: "admitted" in log.read_text(), proc, log)
        port = ports[named[get["port"]]]
        wait_for("readiness", lambda: probe(port, get["path"]) == 200, proc, log)

        # a caller's key, then a chat completion through the gateway, served by that worker
        made = subprocess.run(
            [DIM, "keys", "create", "--name", "k8s-test"],
            env=mesh.admin,
            capture_output=True,
            timeout=60,
            check=True,
        )
        key = re.search(r"dim_\S+", made.stdout.decode())
        assert key, made.stdout.decode()
        gateway = mesh.probes["dim-gateway"][0]
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}

        def answer() -> str | None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{gateway}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {key.group(0)}",
                    "Content-Type": "application/json",
                },
            )
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=30) as r:
                return str(json.load(r)["choices"][0]["message"]["content"])
            return None

        assert wait_for("completion", answer, proc, log) == MODEL_TEXT
