"""A pod of infra/k8s run as a process on this machine, for tests/integration/test_k8s.py: the
Secrets' and ConfigMaps' files written where the pod mounts them (under a folder of the test's),
its container's args and environment with those paths moved there, free ports for the ones its
pod would have to itself, and waiting on what it says or serves."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.nats_server import free_port

DIM = str(Path(sys.executable).with_name("dim"))
WAIT_S = 90.0  # for a process to get somewhere, on a busy machine

Doc = dict[str, Any]
Files = dict[tuple[str, str], dict[str, bytes]]


def files_of(docs: list[Doc]) -> Files:
    """(kind, name) -> each key's bytes, of every Secret and ConfigMap in `docs`."""
    out: Files = {}
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


def materialize(
    workload: Doc, data: Files, root: Path
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


def probe(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_for(
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


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`dim ARGS` with exactly `env` (and a PATH), its output in `log`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    with log.open("wb") as out:
        return subprocess.Popen([DIM, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
