"""Chaos: jobs flow through a real mesh while its processes are killed with SIGKILL and restarted;
afterwards every accepted job must be terminal, once, with usage counted once.

Everything runs here, on loopback: nats-server (one, or a 3-node cluster with ``--cluster 3``),
an orchestrator, a projector, three simulated workers and a gateway, each its own process. The
bus is secured as `dim up` secures it: every process connects over TLS as its own NATS identity
(the workers' approved for their models), and a cluster's routes speak mutual TLS; ``--open``
runs it all without security instead, for comparison. A
client submits jobs through the gateway's jobs API with an ``Idempotency-Key`` per job and
retries (same key) whatever fails — connection refused while the gateway is down, 5xx — so
"accepted" is well defined: the client holds a job id for it. Meanwhile every few seconds one
process is killed with SIGKILL and started again: a worker, the orchestrator, the projector, the
gateway, in turn (and, with a cluster, a nats-server, or one paused with SIGSTOP). Bounded in
jobs and in time. Then `services.audit` compares the accepted jobs with the log.

    just chaos                         # defaults below
    just chaos --jobs 600 --seconds 60 --cluster 3
    just chaos --cluster 3 --open      # no TLS, no identities
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from events.bus import Bus
from events.errors import transient
from services.accounts.keys import create_key
from services.audit import audit, collect, render
from services.local_bus import LocalBus, local_bus, worker_identity
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.settings import Settings
from services.up import child_env
from tests.bench.loadgen import Client, HttpError
from tests.chaos.cluster import NatsCluster


@dataclass
class Proc:
    """A dim process the chaos may kill and start again."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def complaints(proc: Proc, most: int = 30) -> str:
    """The last warnings and errors a process logged (its log lives in a temporary folder)."""
    try:
        lines = proc.log.read_text(errors="replace").splitlines()
    except OSError:
        return f"{proc.name}: no log"
    worse = [ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "Traceback"))]
    shown = "\n".join(f"  {ln[:300]}" for ln in worse[-most:])
    return f"{proc.name}: {len(worse)} warnings/errors" + (f", the last:\n{shown}" if worse else "")


@dataclass
class Tally:
    submitted: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key -> job id
    retries: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


async def submit_all(
    port: int, key: str, tally: Tally, jobs: int, seconds: float, concurrency: int
) -> None:
    """Submit `jobs` jobs over about `seconds`, each retried with its key until accepted."""
    client = Client("127.0.0.1", port, {"authorization": f"Bearer {key}"})
    slots = asyncio.Semaphore(concurrency)
    gap = seconds / jobs
    deadline = time.monotonic() + seconds + 60  # a job keeps retrying a while after the load

    async def one(i: int) -> None:
        idem = str(uuid.uuid4())
        body = {"model": "sim-small", "prompt": f"chaos job {i}", "max_tokens": 12}
        if i % 5 == 0:
            body = {
                "pattern": "collaborative",
                "model": "sim-small",
                "inputs": [f"a{i}", f"b{i}"],
                "max_tokens": 8,
            }
        tally.submitted += 1
        async with slots:
            while time.monotonic() < deadline:
                try:
                    _, data = await client.post("/v1/jobs", body, {"idempotency-key": idem})
                    tally.accepted[idem] = json.loads(data)["job_id"]
                    return
                except HttpError as exc:
                    tally.refused[str(exc)[:3]] += 1
                except (OSError, asyncio.IncompleteReadError, ConnectionError):
                    tally.refused["conn"] += 1
                tally.retries += 1
                await asyncio.sleep(0.2)

    tasks = []
    for i in range(jobs):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(gap)
    await asyncio.gather(*tasks)
    client.close()


async def inject(
    procs: dict[str, list[Proc]],
    cluster: NatsCluster | None,
    tally: Tally,
    stop: asyncio.Event,
    every_s: float,
) -> None:
    """Kill one process every `every_s` seconds, in turn, and start it again."""
    kinds = ["worker", "orchestrator", "projector", "gateway"]
    if cluster is not None:
        kinds += ["nats-kill", "nats-pause"]
    for n in itertools.count():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        kind = kinds[n % len(kinds)]
        if kind == "nats-kill" and cluster is not None:
            i = n % 3
            cluster.kill(i)
            tally.faults["nats-server kill -9"] += 1
            await asyncio.sleep(1.0)
            cluster.restart(i)
            continue
        if kind == "nats-pause" and cluster is not None:
            i = (n + 1) % 3
            cluster.pause(i)
            tally.faults["nats-server SIGSTOP"] += 1
            await asyncio.sleep(2.0)
            cluster.resume(i)
            continue
        group = procs[kind]
        victim = group[n % len(group)]
        victim.kill()
        tally.faults[f"{kind} kill -9"] += 1
        await asyncio.sleep(0.5)
        victim.start()


WORKERS = ("w1", "w2", "w3")


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dim-chaos-") as tmp:
        root = Path(tmp)
        everyone: list[Proc] = []
        async with contextlib.AsyncExitStack() as stack:
            port = free_port()
            settings = Settings(
                data_dir=root / "data",  # where `local_bus` keeps the identities and TLS
                namespace="chaos",
                replicas=3 if args.cluster > 1 else 1,
                gateway_port=port,
                rate_limit_rpm=0,
                tenant_rate_limit_rpm=0,
                jwt_secret="chaos-secret-chaos-secret-chaos-secret",
                heartbeat_s=0.5,
                node_ttl_s=1.5,
                task_ack_wait_s=3.0,
                dispatch_timeout_s=20.0,
                sim_ttft_ms=5,
                sim_tokens_per_s=150,
                capacity=16,
                log_level="WARNING",
                metrics_port=0,  # many processes on one host
            )
            local = (
                None if args.open else local_bus(settings, dict.fromkeys(WORKERS, settings.models))
            )
            cluster = NatsCluster(root / "nats", size=args.cluster, security=local)
            stack.callback(cluster.stop)  # last out, whatever happened
            stack.callback(_stop_all, everyone)
            settings = settings.model_copy(update={"nats_url": cluster.start()})

            def as_(identity: str, base: Settings = settings) -> Settings:
                return local.settings_for(base, identity) if local else base

            bus = await connect(as_("admin"), "chaos")
            stack.push_async_callback(bus.close)
            for attempt in range(60):  # a new cluster elects its JetStream leader first
                try:
                    await ensure_topology(bus, settings)
                    break
                except Exception:
                    if attempt == 59:
                        raise
                    await asyncio.sleep(0.5)
            for attempt in range(60):  # its stream may still be electing a leader
                try:
                    _, key = await create_key(
                        bus, principal_id="chaos", tenant="chaos", roles=("member",), actor="chaos"
                    )
                    break
                except Exception as exc:
                    if attempt == 59 or not transient(exc):
                        raise
                    await asyncio.sleep(0.5)

            await _enroll_workers(bus, local)

            def proc(name: str, identity: str, *cli: str, **env: str) -> Proc:
                return Proc(name, list(cli), child_env(as_(identity), **env), root / f"{name}.log")

            procs = {
                "orchestrator": [proc("orchestrator", "orchestrator", "orchestrator")],
                "projector": [proc("projector", "projector", "projector")],
                "worker": [proc(w, worker_identity(w), "worker", DIM_NODE_ID=w) for w in WORKERS],
                "gateway": [proc("gateway", "gateway", "gateway")],
            }
            everyone.extend(p for group in procs.values() for p in group)
            for p in everyone:
                p.start()
            tally = Tally()
            client = Client("127.0.0.1", port, {"authorization": f"Bearer {key}"})
            for _ in range(200):  # the gateway up and a worker registered
                try:
                    await client.post(
                        "/v1/chat/completions",
                        {
                            "model": "sim-small",
                            "messages": [{"role": "user", "content": "up?"}],
                            "max_tokens": 2,
                        },
                    )
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            client.close()
            print(
                f"chaos: {args.jobs} jobs over {args.seconds:g}s, a fault every {args.every:g}s, "
                f"nats-server x{cluster.size}, {_security(local, cluster.size)}",
                flush=True,
            )
            stop = asyncio.Event()
            t0 = time.monotonic()
            faults = asyncio.create_task(
                inject(procs, cluster if cluster.size > 1 else None, tally, stop, args.every)
            )
            stack.callback(faults.cancel)
            await submit_all(port, key, tally, args.jobs, args.seconds, args.concurrency)
            stop.set()
            await faults
            print(
                f"load done in {time.monotonic() - t0:.1f}s; waiting for every accepted job to end",
                flush=True,
            )
            accepted = set(tally.accepted.values())
            deadline = time.monotonic() + args.settle
            report = None
            while time.monotonic() < deadline:
                try:
                    histories, usage = await collect(bus)
                except Exception as exc:  # the cluster still settling after its last fault
                    if not transient(exc):
                        raise
                    await asyncio.sleep(1)
                    continue
                report = audit(histories, accepted, usage)
                if report.ok:
                    break
                await asyncio.sleep(2)
            assert report is not None
            if report.lost or report.duplicated:
                histories, _ = await collect(bus)
                for job_id in (*report.lost, *report.duplicated)[:10]:
                    steps = ", ".join(f"{e.type}({e.actor})" for e in histories.get(job_id, []))
                    print(f"history of {job_id}: {steps or 'nothing in the log'}")
                for p in everyone:  # what the processes complained of, for the post-mortem
                    print(complaints(p))
    print()
    print(f"| {'jobs submitted':<32} | {tally.submitted:>8} |")
    print(f"| {'client retries (same key)':<32} | {tally.retries:>8} |")
    for kind, n in sorted(tally.faults.items()):
        print(f"| {'fault: ' + kind:<32} | {n:>8} |")
    print(f"| {'faults injected':<32} | {sum(tally.faults.values()):>8} |")
    print(render(report))
    print(
        "\nresult:",
        "PASS (nothing lost, nothing duplicated, usage counted once)" if report.ok else "FAIL",
    )
    return 0 if report.ok and report.accepted == tally.submitted else 1


def _stop_all(procs: list[Proc]) -> None:
    for p in procs:
        p.stop()


async def _enroll_workers(bus: Bus, local: LocalBus | None) -> None:
    """Enroll each worker's key, as `dim up` does: their node records are signed with it."""
    if local is None:
        return
    for attempt in range(60):  # the enrolled bucket may still be electing a leader
        try:
            for node, key in local.worker_keys(list(WORKERS)).items():
                await enroll(bus, node, key, by="chaos")
            return
        except Exception as exc:
            if attempt == 59 or not transient(exc):
                raise
            await asyncio.sleep(0.5)


def _security(local: LocalBus | None, size: int) -> str:
    if local is None:
        return "open (no TLS, no identities)"
    routes = " and mutual TLS on the routes" if size > 1 else ""
    return f"secured (TLS, an identity per process{routes})"


def parser() -> argparse.ArgumentParser:
    """The command line (also what the chaos test passes)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--seconds", type=float, default=40.0, help="how long the load lasts")
    p.add_argument("--every", type=float, default=3.0, help="seconds between faults")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--cluster", type=int, default=1, choices=(1, 3), help="nats-server nodes")
    p.add_argument("--settle", type=float, default=90.0, help="longest wait for jobs to end")
    p.add_argument(
        "--open", action="store_true", help="no TLS and no identities (secured by default)"
    )
    return p


def cli() -> None:
    from services.process import run

    sys.exit(run(main(parser().parse_args())))


if __name__ == "__main__":
    cli()
