"""The compose deployment's two one-shot steps, run in the dim image (docker-compose.yml).

``setup.py files`` (service `setup`, as root, before any server starts):
    `dim nats-config` writes (or completes) the security directory in /security for the hosts
    nats-1..3; each worker of DIM_COMPOSE_WORKERS ("node=model,model;...") gets its NKey seed
    there and an approval for its models, so auth.conf admits it from the servers' first start;
    then each server's copy (auth.conf and tls/ without the CA's key) goes to /out/nats-N, and
    each role's seed and the CA to /out/<role> (owned by the image's `dim` user, seed mode 0600).
    Running it again keeps every key.

``setup.py bus`` (service `init`, as the admin identity, once the servers run):
    `dim provision` until the cluster answers (R3 streams need all three nodes; bounded), then
    `dim nodes approve` for every approved worker: enrolled, so its records and reports are
    believed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

from services.nats_auth import new_identity, worker_permissions
from services.nats_dir import NatsDir, worker_identity
from services.settings import Settings

SECURITY = Path("/security")
OUT = Path("/out")
HOSTS = ("nats-1", "nats-2", "nats-3")
SERVICES = ("gateway", "orchestrator", "projector", "batcher")
PROVISION_TRIES = 60
PROVISION_PAUSE_S = 3.0


def say(line: str) -> None:
    """A progress line on stdout (compose shows it)."""
    print(f"setup: {line}", flush=True)


def workers() -> dict[str, tuple[str, ...]]:
    """DIM_COMPOSE_WORKERS: node id -> the models it is approved for."""
    out: dict[str, tuple[str, ...]] = {}
    for item in os.environ.get("DIM_COMPOSE_WORKERS", "").split(";"):
        node, _, models = item.strip().partition("=")
        if node:
            out[node] = tuple(m.strip() for m in models.split(",") if m.strip())
    return out


def hand_over(src: Path, dest: Path, uid: int, gid: int, mode: int) -> None:
    """Copy `src` to `dest`, owned by uid:gid with `mode`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chown(dest, uid, gid)
    dest.chmod(mode)


def files() -> int:
    """The security directory and every process's share of it."""
    settings = Settings()
    names = settings.names
    hosts = [a for h in HOSTS for a in ("--host", h)]
    done = subprocess.run(
        ["dim", "nats-config", "--out", str(SECURITY), *hosts],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return 1
    say(f"security directory for {', '.join(HOSTS)} (namespace {settings.namespace!r})")
    d = NatsDir(SECURITY)
    for node, models in workers().items():
        identity = new_identity(
            d.ids, worker_identity(node), worker_permissions(names, node, models)
        )
        d.approve(node, identity.public_key, models, by="compose setup")
        say(f"worker {node}: key {identity.public_key}, approved for {','.join(models)}")
    d.write_auth(names)

    dim = pwd.getpwnam("dim")
    for host in HOSTS:
        node = OUT / host
        hand_over(d.auth_file, node / "auth.conf", 0, 0, 0o644)
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            hand_over(d.tls / name, node / "tls" / name, 0, 0, 0o600)
    roles = {role: d.ids / f"{role}.nk" for role in SERVICES}
    roles |= {node: d.ids / f"{worker_identity(node)}.nk" for node in workers()}
    for role, seed in roles.items():
        hand_over(seed, OUT / role / "nats.nk", dim.pw_uid, dim.pw_gid, 0o600)
        hand_over(d.tls / "ca.pem", OUT / role / "ca.pem", dim.pw_uid, dim.pw_gid, 0o644)
    for path in [SECURITY, *SECURITY.rglob("*")]:  # the admin (init, `admin`) runs as dim
        os.chown(path, dim.pw_uid, dim.pw_gid)
    say(f"handed out: {', '.join(HOSTS)} (auth.conf, tls/), {', '.join(roles)} (seed, CA)")
    return 0


def bus() -> int:
    """Provision the streams and buckets, then enroll every approved worker."""
    for attempt in range(1, PROVISION_TRIES + 1):
        done = subprocess.run(
            ["dim", "provision"], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode == 0:
            say(done.stdout.strip() or "provisioned")
            break
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        say(f"provision, try {attempt}/{PROVISION_TRIES}: {last}")
        time.sleep(PROVISION_PAUSE_S)
    else:
        say("the cluster did not answer: gave up")
        return 1
    for approval in NatsDir(SECURITY).approvals().values():
        models = ",".join(approval.models)
        node, key = approval.node_id, approval.public_key
        approve = ["dim", "nodes", "approve", node, key, "--models", models]
        done = subprocess.run(
            [*approve, "--nats-dir", str(SECURITY), "--by", "compose setup"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        say(f"worker {approval.node_id} enrolled ({models})")
    return 0


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step not in ("files", "bus"):
        sys.exit("usage: setup.py files|bus")
    sys.exit(files() if step == "files" else bus())
