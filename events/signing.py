"""Node records signed with the node's NKey, and checked against the key an admin enrolled.

A worker's NATS identity is an NKey (Ed25519): the key nats-server admits it by is the key that
signs what it reports. The signature covers the record as the node wrote it to the bucket, every
field but `signature`, as canonical JSON (keys sorted, no spaces). A reader checks the bytes it
read, not its own model of them, so a record with fields the reader's version does not know, or
without fields added since, still verifies.

A record is verified when it names the enrolled key as its `public_key` and the signature checks
with that key. The key a record claims proves nothing by itself: anyone can sign with their own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import nkeys  # type: ignore[import-untyped]
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from events.jobs import TaskCompleted, TaskFailed, TaskLost, TaskStarted
from events.records import NodeRecord

SIGNATURE = "signature"  # the field holding the signature, left out of what it covers
_PUBLIC_KEY_BYTES = 35  # an NKey public key decoded: prefix byte, 32 key bytes, CRC-16


def canonical(data: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: `data` without its signature, as sorted compact JSON."""
    unsigned = {k: v for k, v in data.items() if k != SIGNATURE}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class NodeKey:
    """A node's signing key, from its NKey user seed ("SU..."), kept for every heartbeat."""

    def __init__(self, seed: bytes) -> None:
        self._pair = nkeys.from_seed(bytearray(seed.strip()))
        self.public_key: str = self._pair.public_key.decode()

    @classmethod
    def from_file(cls, path: Path) -> NodeKey:
        """The key whose seed the file `path` holds (as `DIM_NATS_NKEY_SEED` names it)."""
        return cls(path.read_bytes())

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of `data`, base64url without padding."""
        return _b64(bytes(self._pair.sign(data)))


def sign(seed: bytes, data: bytes) -> str:
    """The Ed25519 signature of `data` by the NKey user seed `seed`, base64url without padding."""
    return NodeKey(seed).sign(data)


def verify(public_key: str, data: bytes, signature: str) -> bool:
    """Whether `signature` is the signature of `data` by the NKey user key `public_key` (False
    for a malformed key or signature too)."""
    try:
        _verify_key(public_key).verify(data, _unb64(signature))
    except (CryptoError, ValueError):
        return False
    return True


def signed_record(record: NodeRecord, key: NodeKey) -> NodeRecord:
    """`record` naming `key` as its public key and signed by it, over what its JSON holds."""
    claims = record.model_copy(update={"public_key": key.public_key, SIGNATURE: ""})
    written = json.loads(claims.model_dump_json())  # what a reader will parse, to the digit
    return claims.model_copy(update={SIGNATURE: key.sign(canonical(written))})


def record_verified(stored: bytes, enrolled_key: str | None) -> bool:
    """Whether a node record, as `stored` in the nodes bucket, names `enrolled_key` (the key
    enrolled for its node) and carries that key's valid signature."""
    if not enrolled_key:
        return False
    try:
        data = json.loads(stored)
        if not isinstance(data, dict) or data.get("public_key") != enrolled_key:
            return False
        signature = data.get(SIGNATURE)
        return isinstance(signature, str) and verify(enrolled_key, canonical(data), signature)
    except ValueError:  # not JSON, or not JSON the signer could have written
        return False


def check_public_key(public_key: str) -> None:
    """Raise ValueError unless `public_key` is an NKey user public key ("U...")."""
    try:
        _raw_public_key(public_key)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"{public_key!r} is not an NKey user public key (U...): {exc}") from None


# What a node reports about its work, and signs: the events it writes to a job's log.
Report = TaskStarted | TaskCompleted | TaskFailed
REPORTS: tuple[type[Report], ...] = (TaskStarted, TaskCompleted, TaskFailed)


def is_report(event: object) -> bool:
    """Whether `event` is a node's report (signed by the node), not the orchestrator's verdict."""
    return type(event) in REPORTS  # `task.lost` is a TaskFailed written by the orchestrator


def report_claims(event: Report) -> bytes:
    """What a node's signature on `event` covers: the task, the attempt, the node, and what
    it reports — for a result the SHA-256 of its output and the usage, for a failure its kind,
    the hash of its error and whether it may be retried. An explicit list, so a field added to
    the event later does not change what an older reader checks."""
    claims: dict[str, Any] = {
        "type": event.type,
        "job_id": event.job_id,
        "task_id": event.task_id,
        "attempt": event.attempt,
        "node_id": event.node_id,
    }
    if isinstance(event, TaskCompleted):
        claims["output_sha256"] = _sha256(event.output)
        claims["finish_reason"] = event.finish_reason
        claims["usage"] = {
            "prompt_tokens": event.usage.prompt_tokens,
            "completion_tokens": event.usage.completion_tokens,
            "estimated": event.usage.estimated,
        }
        # added later, only when present: an older reader's claims of a plain answer stay as
        # they were, and a tool call or logprob cannot be altered under a node's signature
        if event.tool_calls:
            calls = [c.model_dump() for c in event.tool_calls]
            claims["tool_calls_sha256"] = _sha256(canonical({"calls": calls}).decode())
        if event.embeddings:
            claims["embeddings_sha256"] = _sha256("\n".join(event.embeddings))
        if event.logprobs is not None:
            lps = [lp.model_dump() for lp in event.logprobs]
            claims["logprobs_sha256"] = _sha256(canonical({"logprobs": lps}).decode())
    elif isinstance(event, TaskFailed):
        claims["kind"] = event.kind
        claims["error_sha256"] = _sha256(event.error)
        claims["retriable"] = event.retriable
    else:
        claims["delivery"] = event.delivery
        claims["resumed_chars"] = event.resumed_chars
        claims["resumed_tokens"] = event.resumed_tokens
    return canonical(claims)


R = TypeVar("R", TaskStarted, TaskCompleted, TaskFailed)


def signed_report(event: R, key: NodeKey | None) -> R:
    """`event` signed by the node's `key` (as it is, when the node has no key: an open bus)."""
    if key is None:
        return event
    return event.model_copy(update={SIGNATURE: key.sign(report_claims(event))})


def report_verified(event: Report, enrolled_key: str | None) -> bool:
    """Whether `event` carries a valid signature by `enrolled_key`, the key enrolled for the
    node it names."""
    if not enrolled_key or not event.signature or isinstance(event, TaskLost):
        return False
    return verify(enrolled_key, report_claims(event), event.signature)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: str) -> VerifyKey:
    """The key to check `public_key`'s signatures with, decoded once per key (a reader checks
    the same few enrolled keys again and again; decoding costs a fifth of a check)."""
    return VerifyKey(_raw_public_key(public_key))


def _raw_public_key(public_key: str) -> bytes:
    """The 32 bytes of an NKey user public key ("U..."): base32, checked prefix and CRC-16.
    (nkeys-py has no public-key-only KeyPair to verify with: its `verify` needs the seed.)"""
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    if len(raw) != _PUBLIC_KEY_BYTES or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise ValueError("not an NKey user public key")
    if nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ValueError("NKey public key with a wrong checksum")
    return raw[1:-2]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
