"""The compose deployment smoke (`just compose-smoke`): infra/compose brought up from nothing,
traffic through both gateways while a NATS node and a worker are killed, then the audit.

1. `compose.sh up` as its own project (dim-smoke, on free loopback ports, so a running `dim`
   deployment is left alone), building the local images that are missing;
2. waits, bounded, until the one-shot steps exited 0 and every dim container is healthy (its
   image HEALTHCHECK: the gateway's, or the process's /healthz on DIM_METRICS_PORT) and both
   gateways are ready and list the workers' model;
3. `dim keys create` in the `admin` container (the admin identity);
4. chat completions (the official `openai` SDK) and collaborative jobs (the jobs API, one
   Idempotency-Key per job, retried with the same key) alternate between the two gateways;
   a quarter of the way in, `docker kill` (SIGKILL) takes nats-2 and the worker sim-2 away;
   half way, they are started again (and must be healthy again by the end);
5. every request must have its answer (a chat its completion; a job `completed`); `dim audit`
   over the accepted job ids must find none lost, none duplicated, usage counted once; and no
   accepted job may have ended otherwise than completed in the log (`dim jobs --status failed`,
   `cancelled`), whatever its client saw. The history of the first failed or lost jobs is
   printed, to see what happened;
6. prints Prometheus's view of its targets once each has been scraped up (bounded);
7. tears everything down, volumes included (also on failure; `--keep` leaves it running).

Every wait is bounded in time and every retry in count. Exit 0 when all held, 1 otherwise.

    just compose-smoke [--chats 80] [--jobs 20] [--concurrency 4] [--unhealthy-ok ROLE,...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from services.nats_server import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_SH = ROOT / "infra" / "compose" / "compose.sh"
PROJECT = "dim-smoke"
ONE_SHOT = ("setup", "init")
TERMINAL = ("completed", "failed", "cancelled")
RETRY_FOR_S = 90  # a request failing for a transient reason is repeated, 1 s apart, this long
MAX_ATTEMPTS = 120
SHOW_JOBS = 5  # failed or lost jobs whose history is printed
PROMETHEUS_WAIT_S = 45  # three scrape intervals: a restarted process is scraped again
STARTED = time.monotonic()


def say(line: str) -> None:
    """A progress line, with the seconds since the start."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] compose-smoke: {line}", flush=True)


class Failed(Exception):
    """The smoke found something wrong."""


@dataclass
class Deployment:
    """The smoke's compose project: its environment and published ports."""

    env: dict[str, str]
    gateways: tuple[str, str]
    prometheus: str

    @classmethod
    def fresh(cls) -> Deployment:
        ports = {
            "DIM_GATEWAY_1_PORT": free_port(),
            "DIM_GATEWAY_2_PORT": free_port(),
            "DIM_PROMETHEUS_PORT": free_port(),
        }
        env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROFILES"}
        env |= {k: str(v) for k, v in ports.items()}
        env |= {"COMPOSE_PROJECT_NAME": PROJECT, "DIM_JWT_SECRET": secrets.token_urlsafe(48)}
        return cls(
            env,
            (
                f"http://127.0.0.1:{ports['DIM_GATEWAY_1_PORT']}",
                f"http://127.0.0.1:{ports['DIM_GATEWAY_2_PORT']}",
            ),
            f"http://127.0.0.1:{ports['DIM_PROMETHEUS_PORT']}",
        )

    def compose(
        self, *args: str, timeout: float = 120, stdin: str | None = None, check: bool = True
    ) -> str:
        """Run `compose.sh ARGS` for this project; its stdout."""
        done = subprocess.run(
            [str(COMPOSE_SH), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise Failed(f"compose.sh {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        return done.stdout

    def containers(self) -> dict[str, dict[str, object]]:
        """Service name -> `docker inspect` of its container."""
        ids = self.compose("ps", "-a", "-q").split()
        if not ids:
            return {}
        found = json.loads(_docker("inspect", *ids))
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in found}


def _docker(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise Failed(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def _health(container: dict[str, object]) -> str:
    state = container["State"]
    assert isinstance(state, dict)
    health = state.get("Health")
    return str(health["Status"]) if isinstance(health, dict) else "none"


def wait_healthy(d: Deployment, unhealthy_ok: set[str], timeout_s: float) -> None:
    """Until the one-shot steps exited 0 and every dim container is healthy."""
    deadline, last_said = time.monotonic() + timeout_s, 0.0
    while True:
        containers, waiting = d.containers(), []
        for service in ONE_SHOT:
            state = containers.get(service, {}).get("State", {})
            assert isinstance(state, dict)
            if state.get("Status") == "exited" and state.get("ExitCode") != 0:
                raise Failed(f"{service} failed:\n{d.compose('logs', '--tail', '30', service)}")
            if state.get("Status") != "exited":
                waiting.append(service)
        for service, c in sorted(containers.items()):
            if service in ONE_SHOT:
                continue
            role = re.sub(r"-\d+$", "", service)
            if _health(c) not in ("none", "healthy") and role not in unhealthy_ok:
                waiting.append(f"{service} ({_health(c)})")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise Failed(f"not healthy after {timeout_s:.0f} s: {', '.join(waiting)}")
        if time.monotonic() - last_said > 10:
            say(f"waiting for {', '.join(waiting)}")
            last_said = time.monotonic()
        time.sleep(2)


def wait_serving(d: Deployment, key: str, model: str, timeout_s: float) -> None:
    """Until both gateways are ready and list `model`."""
    deadline = time.monotonic() + timeout_s
    for url in d.gateways:
        while True:
            try:
                with httpx.Client(base_url=url, timeout=5) as http:
                    ready = http.get("/readyz").status_code == 200
                    listed = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                    if ready and model in {m["id"] for m in listed.json().get("data", [])}:
                        break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise Failed(f"{url} does not serve {model} after {timeout_s:.0f} s")
            time.sleep(1)
        say(f"{url} is ready and serves {model}")


@dataclass
class Tally:
    """What the traffic got."""

    accepted: list[str] = field(default_factory=list)  # job ids a client holds
    chats: int = 0
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> its final status
    refusals: list[tuple[float, int, str]] = field(default_factory=list)  # (s, gateway, why)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self) -> int:
        with self.lock:
            return self.chats + len(self.jobs) + len(self.problems)


def transient(status: int | None, code: str) -> bool:
    """Whether a failed request is worth repeating: no answer, 5xx, 429; and 404 "no live node
    serves it", which a gateway answers while its view of the nodes catches up after a fault."""
    if status is None or status >= 500 or status == 429:
        return True
    return status == 404 and code == "model_not_found"


def refused(tally: Tally, gateway: int, status: int | None, code: str) -> None:
    """Record one refusal (to report how long, where and why clients were turned away)."""
    with tally.lock:
        tally.refusals.append(
            (time.monotonic() - STARTED, gateway, f"{status or ''} {code}".strip())
        )


def _code(answer: httpx.Response) -> str:
    try:
        return str(answer.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def chat(d: Deployment, key: str, i: int, tally: Tally) -> None:
    """One chat completion through gateway i % 2 (both in turn while it fails, bounded)."""
    last, deadline = "", time.monotonic() + RETRY_FOR_S
    for attempt in range(MAX_ATTEMPTS):
        gateway = (i + attempt) % 2
        client = openai.OpenAI(
            base_url=f"{d.gateways[gateway]}/v1", api_key=key, max_retries=0, timeout=30
        )
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="sim-small",
                messages=[{"role": "user", "content": f"smoke {i}"}],
                max_tokens=16,
            )
            answer = raw.parse()
            with tally.lock:
                if not answer.choices[0].message.content:
                    tally.problems.append(f"chat {i}: an empty answer")
                tally.accepted.append(raw.headers["x-dim-job-id"])
                tally.chats += 1
            return
        except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as exc:
            status = getattr(exc, "status_code", None)
            code = str(getattr(exc, "code", None) or "") if status else type(exc).__name__
            last = f"{status} {exc}" if status else f"{type(exc).__name__}: {exc}"
            refused(tally, gateway, status, code)
            if not transient(status, code) or time.monotonic() > deadline:
                break
            time.sleep(1)
        finally:
            client.close()
    with tally.lock:
        tally.problems.append(f"chat {i}: {last}")


def pattern_job(d: Deployment, key: str, i: int, tally: Tally, timeout_s: float) -> None:
    """One collaborative job through gateway i % 2: submitted with an Idempotency-Key (repeated
    with it, on both gateways in turn, while it fails; bounded), then followed until it ends."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"smoke-{uuid.uuid4()}"}
    body = {
        "pattern": "collaborative",
        "model": "sim-small",
        "inputs": [f"document {i}.{k}" for k in range(3)],
        "aggregate": "concat",
        "max_tokens": 16,
    }
    job_id, last, deadline = "", "", time.monotonic() + RETRY_FOR_S
    for attempt in range(MAX_ATTEMPTS):
        gateway = (i + attempt) % 2
        status: int | None = None
        code = ""
        try:
            answer = httpx.post(
                f"{d.gateways[gateway]}/v1/jobs", json=body, headers=headers, timeout=30
            )
            if answer.status_code in (200, 202):
                job_id = answer.json()["job_id"]
                break
            status, code, text = answer.status_code, _code(answer), answer.text[:300]
        except httpx.HTTPError as exc:
            code, text = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        last = f"{status} {text}" if status else text
        refused(tally, gateway, status, code)
        if not transient(status, code) or time.monotonic() > deadline:
            break
        time.sleep(1)
    if not job_id:
        with tally.lock:
            tally.problems.append(f"job {i}: not accepted: {last}")
        return
    with tally.lock:
        tally.accepted.append(job_id)
    deadline, status_now = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        url = d.gateways[int(time.monotonic()) % 2]
        try:
            view = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10)
            if view.status_code == 200:
                status_now = view.json().get("status", "")
        except (httpx.HTTPError, ValueError):
            pass
        if status_now in TERMINAL:
            with tally.lock:
                tally.jobs[job_id] = status_now
            return
        time.sleep(0.5)
    with tally.lock:
        tally.problems.append(
            f"job {i} ({job_id}): still {status_now or 'unknown'} after {timeout_s} s"
        )


def report_refusals(tally: Tally) -> None:
    """Per gateway: how many requests it turned away, why, and over which span of the run."""
    for gateway in (0, 1):
        mine = [(t, r) for t, g, r in tally.refusals if g == gateway]
        if not mine:
            say(f"gateway-{gateway + 1}: turned no request away")
            continue
        reasons = ", ".join(f"{r} x{n}" for r, n in Counter(r for _, r in mine).most_common())
        first, last = min(t for t, _ in mine), max(t for t, _ in mine)
        say(
            f"gateway-{gateway + 1}: turned {len(mine)} requests away ({reasons}) between "
            f"{first:.1f}s and {last:.1f}s; each was repeated until answered"
        )


def faults(
    d: Deployment, victims: dict[str, str], tally: Tally, total: int, stop: threading.Event
) -> None:
    """SIGKILL the `victims` (service -> container id) a quarter of the way in; start them again
    half way (the rest of the traffic runs with them back)."""
    for share, action in ((1 / 4, "kill"), (1 / 2, "start")):
        while tally.done() < total * share and not stop.wait(0.1):
            pass
        if stop.is_set():
            return
        if action == "kill":
            for container in victims.values():
                _docker("kill", "--signal", "KILL", container)
            say(
                f"killed {' and '.join(victims)} (SIGKILL) after {tally.done()} of {total} requests"
            )
        else:
            d.compose("start", *victims)
            say(f"started {' and '.join(victims)} again after {tally.done()} of {total} requests")


def traffic(d: Deployment, key: str, args: argparse.Namespace) -> Tally:
    """The chats and jobs, interleaved, with the faults meanwhile."""
    tally, stop = Tally(), threading.Event()
    total = args.chats + args.jobs
    job_at = {int((k + 0.5) * total / args.jobs) for k in range(args.jobs)}
    plan = ["job" if n in job_at else "chat" for n in range(total)]
    found = d.containers()
    victims = {service: str(found[service]["Id"]) for service in ("nats-2", "sim-2")}
    faulter = threading.Thread(target=faults, args=(d, victims, tally, total, stop), daemon=True)
    faulter.start()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for n, kind in enumerate(plan):
            if kind == "chat":
                pool.submit(chat, d, key, n, tally)
            else:
                pool.submit(pattern_job, d, key, n, tally, args.job_timeout)
    stop.set()
    faulter.join(timeout=130)
    return tally


def prometheus_targets(d: Deployment, unhealthy_ok: set[str], timeout_s: float) -> list[str]:
    """Until Prometheus has scraped every target up (a restarted one waits for its next scrape;
    bounded), then each target's health as it sees it; the problems."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{d.prometheus}/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        down = [
            t
            for t in targets
            if t["health"] != "up"
            and re.sub(r"-\d+$", "", t["labels"]["instance"].split(":")[0]) not in unhealthy_ok
        ]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(3)
    for t in sorted(targets, key=lambda t: t["scrapeUrl"]):
        say(f"prometheus: {t['scrapeUrl']} {t['health']} {t['lastError']}".rstrip())
    return [f"prometheus target {t['scrapeUrl']} is {t['health']}" for t in down]


def ended_otherwise(d: Deployment, accepted: list[str]) -> list[str]:
    """Accepted jobs the log ended otherwise than completed (failed or cancelled), whatever the
    client saw: `dim jobs --status` with the admin identity."""
    wanted, found = set(accepted), []
    for status in ("failed", "cancelled"):
        out = d.compose("run", "--rm", "-T", "admin", "jobs", "--status", status, "--limit", "1000")
        found += [j for j in re.findall(r"\b[0-9A-HJKMNP-TV-Z]{26}\b", out) if j in wanted]
    return sorted(set(found))


def smoke(args: argparse.Namespace) -> int:
    d = Deployment.fresh()
    unhealthy_ok = {r.strip() for r in args.unhealthy_ok.split(",") if r.strip()}
    try:
        say(f"compose project {PROJECT}: down first, in case a run left it")
        d.compose("down", timeout=180)
        say("up (local images built where missing)")
        d.compose("up", timeout=900)
        wait_healthy(d, unhealthy_ok, args.ready_timeout)
        say(
            "every container is healthy"
            + (f" (but {', '.join(sorted(unhealthy_ok))}: not required)" if unhealthy_ok else "")
        )
        out = d.compose("run", "--rm", "-T", "admin", "keys", "create", "--name", "smoke")
        found = re.search(r"dim_\S+", out)
        if not found:
            raise Failed(f"no key in `dim keys create`'s answer: {out}")
        key = found.group(0)
        say("issued an API key with the admin identity (dim keys create)")
        wait_serving(d, key, "sim-small", args.ready_timeout)

        say(
            f"traffic: {args.chats} chat completions and {args.jobs} collaborative jobs, "
            f"{args.concurrency} at a time, alternating gateways"
        )
        tally = traffic(d, key, args)
        failed_jobs = {j: s for j, s in tally.jobs.items() if s != "completed"}
        say(
            f"chats answered {tally.chats}/{args.chats}; jobs completed "
            f"{len(tally.jobs) - len(failed_jobs)}/{args.jobs}"
        )
        report_refusals(tally)
        problems = list(tally.problems) + [f"job {j} ended {s}" for j, s in failed_jobs.items()]
        wait_healthy(d, unhealthy_ok, args.ready_timeout)  # sim-2 back, and nothing else down
        state = d.containers()["nats-2"]["State"]
        assert isinstance(state, dict)
        if state.get("Status") != "running":
            problems.append(f"nats-2 is {state.get('Status')} after its restart")
        say("after the faults: every container is running and healthy again")

        audit = subprocess.run(
            [str(COMPOSE_SH), "run", "--rm", "-T", "admin", "audit", "--accepted", "/dev/stdin"],
            env=d.env,
            input="\n".join(tally.accepted) + "\n",
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        for line in audit.stdout.strip().splitlines():
            say(f"audit: {line}")
        if audit.returncode != 0:
            problems.append(f"dim audit: exit {audit.returncode} {audit.stderr.strip()[-500:]}")
        lost = re.findall(r"lost: (.+)", audit.stdout)
        not_completed = ended_otherwise(d, tally.accepted)
        problems += [
            f"job {j} was accepted but ended otherwise than completed in the log"
            for j in not_completed
            if j not in failed_jobs
        ]
        suspects = list(failed_jobs) + not_completed + [j for x in lost for j in x.split(", ")]
        suspects = list(dict.fromkeys(j.strip() for j in suspects))
        for job_id in suspects[:SHOW_JOBS]:  # what happened to each, from the log
            shown = d.compose("run", "--rm", "-T", "admin", "job", job_id, check=False)
            for line in shown.strip().splitlines():
                say(f"job {job_id}: {line}")
        problems += prometheus_targets(d, unhealthy_ok, PROMETHEUS_WAIT_S)
        for p in problems:
            say(f"PROBLEM: {p}")
        say("passed" if not problems else f"FAILED: {len(problems)} problems")
        return 0 if not problems else 1
    except (Failed, subprocess.TimeoutExpired) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if args.keep:
            say(
                f"--keep: left running (compose.sh with COMPOSE_PROJECT_NAME={PROJECT}; gateways {', '.join(d.gateways)})"
            )
        else:
            say("down (containers, network, volumes)")
            d.compose("down", timeout=300, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chats", type=int, default=80, help="chat completions (default 80)")
    parser.add_argument("--jobs", type=int, default=20, help="collaborative jobs (default 20)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once (default 4)")
    parser.add_argument(
        "--ready-timeout", type=float, default=240, help="seconds to become healthy (default 240)"
    )
    parser.add_argument(
        "--job-timeout", type=float, default=120, help="seconds a job may take to end (default 120)"
    )
    parser.add_argument(
        "--unhealthy-ok",
        default="",
        metavar="ROLE,...",
        help="roles (orchestrator, batcher, ...) whose /healthz and /metrics are not required",
    )
    parser.add_argument("--keep", action="store_true", help="leave the deployment running")
    return smoke(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
