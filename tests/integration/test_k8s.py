"""The services of infra/k8s started as their pods start them, against a real secured
nats-server made from the same `dim nats-config` directory: each gets exactly its container's
args and environment as `kubectl kustomize` renders them, and the files of the Secrets and
ConfigMaps its pod mounts (as infra/k8s/secrets.sh makes them) where it mounts them, moved under
a folder of its own. Then each answers its readiness probe.

What differs from a cluster, and why: one nats-server, not the chart's three (so `dim provision`
makes R1 streams; the pods' DIM_REPLICAS=3 then only warns), dialled at its own address (no
Service `nats` here); every process on this machine's network, so each gets a free port where its
pod has its own; the mounts under the test's folder. The workers need an approval and an engine
(vLLM, an upstream): tests/e2e/test_cli.py runs that flow with `dim worker --join`."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
            env[var["name"]] = data[("Secret", key["name"])][key["key"]].decode()
    for name, value in env.items():
        for mount_path, here in moved.items():
            if value.startswith(mount_path + "/"):
                env[name] = here + value[len(mount_path) :]
    ports = {p["containerPort"]: free_port() for p in container["ports"]}
    for name in ("DIM_GATEWAY_PORT", "DIM_METRICS_PORT"):
        if name in env:
            env[name] = str(ports.get(int(env[name]), free_port()))
    return list(container["args"]), env, ports


def _ready(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


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
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stop()
