"""Subject, stream and bucket names under a namespace, and the encoding of names into subject tokens.

Model names such as ``meta-llama/Llama-3.1-8B`` contain characters NATS subjects cannot carry
(``.`` separates tokens, ``*`` and ``>`` are wildcards, whitespace ends a subject). `encode_token`
maps any string to a safe, readable, reversible token: ASCII letters, digits and ``-`` stay as they
are, every other byte of the UTF-8 form becomes ``_XX`` (upper-case hex).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from events.errors import InvalidName

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")
_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def encode_token(name: str) -> str:
    """Encode any non-empty string as one subject token (see module docs)."""
    if not name:
        raise InvalidName("an empty name cannot be a subject token")
    return "".join(chr(b) if b in _SAFE else f"_{b:02X}" for b in name.encode())


def decode_token(token: str) -> str:
    """Invert `encode_token`."""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            m = _ESCAPE.match(token, i)
            if m is None:
                raise InvalidName(f"bad escape in subject token {token!r}")
            raw.append(int(m.group(1), 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    return raw.decode()


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a usable id (letters, digits, '-', '_'), else raise `InvalidName`."""
    if not _ID.match(value):
        raise InvalidName(f"{kind} {value!r} is not valid: use 1-128 letters, digits, '-' or '_'")
    return value


def is_id(value: str) -> bool:
    """Whether `value` is a usable id (what `check_id` accepts)."""
    return bool(_ID.match(value))


# The event types a node writes about its own attempt: filed under the writing node
# (``NS.jobs.<job>.<type>.<node>``, one token more than a decision's ``NS.jobs.<job>.<type>``), so
# that the server lets a node write only under its own id, and so that the decisions of a job
# (what the gateway and the orchestrators append) can be matched on their own: ``NS.jobs.<job>.*.*``
# matches five-token subjects only. Appends that decide (a dispatch, a verdict, the job's end)
# expect the last *decision*, so a worker's report never makes one lose a race.
REPORT_TYPES = frozenset({"task.started", "task.completed", "task.failed"})


def job_id_of(subject: str) -> str:
    """The job id of a JOBS subject (``NS.jobs.<job_id>.<type>[.<node>]``)."""
    return subject.split(".", 3)[2]


def job_event_of(subject: str) -> tuple[str, str]:
    """The job id and the event type of a JOBS subject (``NS.jobs.<job_id>.<type>[.<node>]``)."""
    parts = subject.split(".")
    return parts[2], ".".join(parts[3:5])


def batch_id_of(subject: str) -> str:
    """The batch id of a BATCHES subject (``NS.batches.<batch_id>.<type>``)."""
    return subject.split(".", 3)[2]


def report_writer(subject: str) -> str | None:
    """The node a report's JOBS subject names (``NS.jobs.<job>.<type>.<node>``); None for a
    decision's subject."""
    parts = subject.split(".")
    return parts[5] if len(parts) == 6 else None


@dataclass(frozen=True, slots=True)
class Names:
    """Every subject, stream and bucket name of one namespace."""

    ns: str = "dim"

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.ns):
            raise InvalidName(
                f"namespace {self.ns!r} is not valid: start with a letter, then up to 31 "
                "letters, digits or '-'"
            )

    # streams and buckets
    @property
    def jobs_stream(self) -> str:
        """Stream holding every job's history."""
        return f"{self.ns}_JOBS"

    @property
    def tasks_stream(self) -> str:
        """Work-queue stream of inference tasks."""
        return f"{self.ns}_TASKS"

    @property
    def tokens_stream(self) -> str:
        """Memory stream of token chunks."""
        return f"{self.ns}_TOKENS"

    @property
    def accounts_stream(self) -> str:
        """Stream of account events."""
        return f"{self.ns}_ACCOUNTS"

    @property
    def rate_stream(self) -> str:
        """Counter stream of per-caller request counts (rate limits)."""
        return f"{self.ns}_RATE"

    def rate(self, caller: str, window: int) -> str:
        """Subject counting one caller's requests in one window."""
        return f"{self.ns}.rate.{encode_token(caller)}.{window}"

    @property
    def nodes_stream(self) -> str:
        """Stream of node lifecycle events (joined, left, lost)."""
        return f"{self.ns}_NODES"

    def node_event(self, node_id: str, event_type: str) -> str:
        """Subject of one node lifecycle event."""
        return f"{self.ns}.nodes.{check_id('node id', node_id)}.{event_type}"

    @property
    def nodes_all(self) -> str:
        """Filter for every node lifecycle event."""
        return f"{self.ns}.nodes.>"

    @property
    def dead_stream(self) -> str:
        """Stream recording messages that were terminated as unprocessable."""
        return f"{self.ns}_DEAD"

    @property
    def batches_stream(self) -> str:
        """Stream of batch lifecycle events (the Batch API)."""
        return f"{self.ns}_BATCHES"

    def batch(self, batch_id: str, event_type: str) -> str:
        """Subject of one event in a batch's history."""
        return f"{self.ns}.batches.{check_id('batch id', batch_id)}.{event_type}"

    def batch_all(self, batch_id: str) -> str:
        """Filter for one batch's whole history."""
        return f"{self.ns}.batches.{batch_id}.>"

    @property
    def batches_all(self) -> str:
        """Filter for every batch event."""
        return f"{self.ns}.batches.>"

    def bucket(self, name: str) -> str:
        """A KV bucket name: ``nodes``, ``sessions``, ``jobs``, ``usage``."""
        return f"{self.ns}_{name}"

    # subjects
    def job(self, job_id: str, event_type: str) -> str:
        """Subject of one decision in a job's history (every type but a node's reports, which
        `report` files under their node)."""
        if event_type in REPORT_TYPES:
            raise InvalidName(f"{event_type} is a node's report: its subject is Names.report's")
        return f"{self.ns}.jobs.{job_id}.{event_type}"

    def report(self, job_id: str, event_type: str, node_id: str) -> str:
        """Subject of one report (`REPORT_TYPES`) node `node_id` writes in a job's history."""
        if event_type not in REPORT_TYPES:
            raise InvalidName(f"{event_type} is not a node's report")
        return f"{self.ns}.jobs.{job_id}.{event_type}.{check_id('node id', node_id)}"

    def reports(self, job_id: str, event_type: str) -> str:
        """Filter for one report type of a job (``*``: of every job), from every node."""
        return f"{self.ns}.jobs.{job_id}.{event_type}.*"

    def job_all(self, job_id: str) -> str:
        """Filter for one job's whole history."""
        return f"{self.ns}.jobs.{job_id}.>"

    def job_decisions(self, job_id: str) -> str:
        """Filter for a job's decisions: every event but the nodes' reports (see `REPORT_TYPES`)."""
        return f"{self.ns}.jobs.{job_id}.*.*"

    @property
    def jobs_all(self) -> str:
        """Filter for every job event."""
        return f"{self.ns}.jobs.>"

    def tasks_for_model(self, model: str) -> str:
        """Work subject shared by every worker serving `model`."""
        return f"{self.ns}.tasks.model.{encode_token(model)}"

    def tasks_for_node(self, node_id: str) -> str:
        """Work subject of one node (targeted routing)."""
        return f"{self.ns}.tasks.node.{check_id('node id', node_id)}"

    @property
    def tasks_all(self) -> str:
        """Filter for every work subject."""
        return f"{self.ns}.tasks.>"

    def tokens(self, job_id: str, node_id: str) -> str:
        """Subject of one job's token chunks written by node `node_id` (a node may write only
        under its own id, so a reader knows whose chunk it is from the subject)."""
        return f"{self.ns}.tokens.{job_id}.{check_id('node id', node_id)}"

    def job_tokens(self, job_id: str) -> str:
        """Filter for one job's token chunks, from every node."""
        return f"{self.ns}.tokens.{job_id}.*"

    @staticmethod
    def tokens_writer(subject: str) -> str:
        """The node whose token subject `subject` is (its last token)."""
        return subject.rpartition(".")[2]

    @property
    def tokens_all(self) -> str:
        """Filter for every job's token chunks."""
        return f"{self.ns}.tokens.>"

    def accounts(self, principal_id: str, event_type: str) -> str:
        """Subject of one account event."""
        return f"{self.ns}.accounts.{principal_id}.{event_type}"

    def dead(self, consumer: str) -> str:
        """Subject recording messages a consumer rejected."""
        return f"{self.ns}.dead.{encode_token(consumer)}"

    @property
    def dead_all(self) -> str:
        """Filter for every rejected message."""
        return f"{self.ns}.dead.>"
