"""Who may do what on the bus: one NATS identity per role, and the subjects each may publish and
subscribe to, enforced by nats-server (`authorization { users = [...] }` with NKey users).

The roles and why each needs what it gets:

- `gateway`: appends `job.submitted` / `job.cancelled`, sends the work of jobs it planned, writes
  account events, rate counters and the keys, accounts, sessions and idempotency buckets; reads
  jobs and tokens to answer, and the nodes and enrolled buckets to show which node records are
  signed by their enrolled keys. For the Batch API: stores and deletes files (the files object
  store and their records), appends `batch.created` / `batch.failed` / `batch.cancelling`, and
  reads the batch views.
- `orchestrator`: appends the job events `decide` makes (plans, dispatches, reroutes, lost
  attempts, ends), sends work, records lost nodes and dead letters, writes the queues bucket;
  deletes a work message JetStream gave up on; reads the nodes and enrolled buckets.
- `projector`: writes the jobs and usage buckets, and the batch views; reads the enrolled
  bucket, to check what nodes report.
- `batcher` (the Batch API's runner): submits and cancels the jobs of batch lines, appends the
  batch events it decides (started, completed, cancelled), writes the output files (the files
  object store and their records); reads the batch views, the files and the jobs' ends.
- `worker` (one identity per node): pulls only its own and its models' work, appends only
  `task.started` / `task.completed` / `task.failed`, publishes token chunks and its own node
  events, writes only its own node record. It cannot read the keys, accounts or sessions
  buckets, nor any other node's queue, nor write the enrolled bucket.
- `admin`: everything (provisioning streams and buckets, enrolling node keys, `dim keys`,
  `dim nodes` ...).

No role but `admin` may create, update, delete or purge a stream: provisioning is the admin's
step. Reply subjects are confined per identity by an inbox prefix (`_I.<identity>`), so no
identity can listen to another's answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from events.subjects import Names, encode_token

ROLES = ("admin", "gateway", "orchestrator", "projector", "batcher")


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to (NATS wildcards)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }


def inbox_prefix(identity: str) -> str:
    """The reply-subject prefix of `identity` (its only subscription for answers)."""
    return f"_I.{encode_token(identity)}"


def _reads(streams: list[str]) -> list[str]:
    """JetStream API subjects to read `streams`: consumers (create, info, next, delete), direct
    and stored message reads, acks and flow control of its own consumers."""
    out: list[str] = []
    for s in streams:
        out += [
            f"$JS.API.CONSUMER.CREATE.{s}",
            f"$JS.API.CONSUMER.CREATE.{s}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.>",
            f"$JS.API.CONSUMER.INFO.{s}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{s}.>",
            f"$JS.API.CONSUMER.DELETE.{s}.>",
            f"$JS.API.DIRECT.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}.>",
            f"$JS.API.STREAM.MSG.GET.{s}",
            f"$JS.ACK.{s}.>",
        ]
    return out


def _service_base(names: Names, identity: str) -> tuple[list[str], list[str]]:
    """What every service identity needs: stream info, flow control, its inbox."""
    publish = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.FC.>"]
    return publish, [f"{inbox_prefix(identity)}.>"]


def _kv(names: Names, *buckets: str) -> list[str]:
    return [f"$KV.{names.bucket(b)}.>" for b in buckets]


def _streams(names: Names, *which: str) -> list[str]:
    return [getattr(names, f"{w}_stream") for w in which]


def _buckets(names: Names, *buckets: str) -> list[str]:
    return [f"KV_{names.bucket(b)}" for b in buckets]


def _batch_events(names: Names, *types: str) -> list[str]:
    return [f"{names.ns}.batches.*.{t}" for t in types]


def role_permissions(role: str, names: Names) -> Permissions:
    """The permissions of a service role (`gateway`, `orchestrator`, `projector`, `batcher`,
    `admin`)."""
    ns = names.ns
    payloads = f"OBJ_{names.bucket('payloads')}"
    files = f"OBJ_{names.bucket('files')}"
    # writing the files object store: its chunks and records, and purging the chunks an object
    # replaced or deleted leaves behind (nats-py's object store does it on put and delete)
    write_files = [
        f"$O.{names.bucket('files')}.>",
        f"$JS.API.STREAM.PURGE.{files}",
        *_kv(names, "file_meta"),
    ]
    publish, subscribe = _service_base(names, role)
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    if role == "gateway":
        publish += [
            names.job("*", "job.submitted"),
            names.job("*", "job.cancelled"),
            f"{ns}.tasks.model.>",
            f"{ns}.accounts.>",
            f"{ns}.rate.>",
            f"{ns}.dead.>",
            f"$O.{names.bucket('payloads')}.>",
            *_kv(names, "keys", "accounts", "sessions", "idempotency", "reservations"),
            *_reads(_streams(names, "jobs", "tokens", "rate")),
            *_reads(
                _buckets(names, "nodes", "enrolled", "keys", "queues", "usage", "reservations")
            ),
            *_reads(_buckets(names, "sessions", "accounts")),
            *_reads([*_buckets(names, "idempotency", "jobs", "job_index"), payloads]),
            *_batch_events(names, "batch.created", "batch.failed", "batch.cancelling"),
            *write_files,
            *_reads(_streams(names, "batches")),
            *_reads([*_buckets(names, "batches", "batch_index", "file_meta"), files]),
        ]
        subscribe += [names.jobs_all, names.tokens_all]
    elif role == "orchestrator":
        publish += [
            *(
                names.job("*", t)
                for t in (
                    "job.planned",
                    "job.completed",
                    "job.failed",
                    "task.dispatched",
                    "task.rerouted",
                    "task.lost",
                    "task.dead_lettered",
                )
            ),
            f"{ns}.tasks.>",
            f"{ns}.nodes.*.node.lost",
            f"{ns}.dead.>",
            f"$O.{names.bucket('payloads')}.>",
            f"$JS.API.STREAM.MSG.DELETE.{names.tasks_stream}",
            *_kv(names, "queues"),
            *_reads(_streams(names, "jobs", "dead", "tasks")),
            *_reads([*_buckets(names, "nodes", "enrolled", "queues"), payloads]),
        ]
        subscribe += [f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{names.tasks_stream}.*"]
    elif role == "projector":
        publish += [
            f"{ns}.dead.>",
            *_kv(names, "jobs", "usage", "job_index", "reservations", "batches", "batch_index"),
            *_reads(_streams(names, "jobs", "batches")),
            *_reads(
                [
                    *_buckets(names, "jobs", "usage", "enrolled", "job_index", "reservations"),
                    *_buckets(names, "batches", "batch_index"),
                    payloads,
                ]
            ),
        ]
    elif role == "batcher":
        publish += [
            names.job("*", "job.submitted"),
            names.job("*", "job.cancelled"),
            *_batch_events(names, "batch.started", "batch.completed", "batch.cancelled"),
            f"$O.{names.bucket('payloads')}.>",  # a line's job too large for a message
            *write_files,
            *_reads(_streams(names, "jobs", "batches")),
            *_reads([*_buckets(names, "batches"), files, payloads]),
        ]
    else:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}, or a worker node")
    return Permissions(tuple(publish), tuple(subscribe))


def worker_permissions(names: Names, node_id: str, models: tuple[str, ...]) -> Permissions:
    """The permissions of worker node `node_id` serving `models`: its own work only."""
    ns, tasks = names.ns, names.tasks_stream
    durables = [(f"node-{node_id}", names.tasks_for_node(node_id))] + [
        (f"model-{encode_token(m)}", names.tasks_for_model(m)) for m in models
    ]
    publish, subscribe = _service_base(names, f"w-{node_id}")
    publish += [
        names.report("*", "task.started", node_id),
        names.report("*", "task.completed", node_id),
        names.report("*", "task.failed", node_id),
        names.tokens("*", node_id),
        f"{ns}.nodes.{node_id}.>",
        f"$KV.{names.bucket('nodes')}.{node_id}",
        *_reads([*_streams(names, "jobs", "tokens"), f"OBJ_{names.bucket('payloads')}"]),
        *_reads(_buckets(names, "enrolled")),  # to believe only enrolled nodes' chunks (resume)
    ]
    for durable, subject in durables:
        publish += [
            f"$JS.API.CONSUMER.CREATE.{tasks}.{durable}.{subject}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{tasks}.{durable}",
            f"$JS.API.CONSUMER.INFO.{tasks}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.{durable}",
            f"$JS.ACK.{tasks}.{durable}.>",
            names.dead(durable),
        ]
    subscribe += [names.job("*", t) for t in ("job.completed", "job.failed", "job.cancelled")]
    return Permissions(tuple(publish), tuple(subscribe))


@dataclass(frozen=True, slots=True)
class Identity:
    """One NATS user: a name, its NKey (public key and the seed file), its permissions."""

    name: str
    public_key: str
    seed_file: Path
    permissions: Permissions


def new_identity(directory: Path, name: str, permissions: Permissions) -> Identity:
    """The identity `name` with its NKey seed kept in `directory/<name>.nk` (mode 0600): made on
    first use, read back afterwards (the same key across restarts)."""
    import nkeys  # type: ignore[import-untyped]

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.nk"
    if path.exists():
        seed = path.read_bytes().strip()
    else:
        seed = _new_user_seed()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    public = nkeys.from_seed(seed).public_key.decode()
    return Identity(name, public, path, permissions)


def _new_user_seed() -> bytes:
    import nkeys

    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def authorization(users: list[tuple[str, Permissions]]) -> str:
    """The nats-server `authorization` block admitting exactly `users` (public NKey, its
    permissions)."""
    listed = [{"nkey": key, "permissions": p.config()} for key, p in users]
    return "authorization {\n  users = " + json.dumps(listed, indent=2) + "\n}\n"
