"""Node records signed with the node's NKey: a signature checks only with the key that made it,
over the bytes it was made for, and a stored record is verified only by the key enrolled for its
node — never by the key it claims."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from events.records import EnrolledKey, NodeRecord
from events.signing import NodeKey, canonical, record_verified, sign, signed_record, verify
from events.subjects import Names
from services.engines.simulated import SimulatedEngine
from services.metrics import WorkerMetrics
from services.registry.live import LiveNodes
from services.render import nodes_table
from services.settings import Settings
from services.worker.presence import Presence
from services.worker.tally import Tally
from tests.secured_nats import new_user_seed, public_key

SEED, OTHER = new_user_seed(), new_user_seed()
KEY, OTHER_KEY = NodeKey(SEED), NodeKey(OTHER)


def _record(**changes: Any) -> NodeRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "node_id": "n1",
        "models": ("m",),
        "engine": "simulated",
        "capacity": 4,
        "version": "1",
        "started_at": now,
        "heartbeat_at": now,
        "tasks_completed": 7,
        "tokens_out": 300,
        "avg_latency_ms": 12.345,
        "queued": {"m": 2, "a": 1},
    }
    return NodeRecord(**(fields | changes))


def _edited(stored: bytes, **changes: Any) -> bytes:
    return json.dumps(json.loads(stored) | changes).encode()


def test_a_signature_checks_with_its_key_over_its_bytes_only() -> None:
    signature = sign(SEED, b"tokens_out=300")
    assert verify(KEY.public_key, b"tokens_out=300", signature)
    assert KEY.public_key == public_key(SEED)  # the key nats-server admits the node by
    assert not verify(KEY.public_key, b"tokens_out=301", signature)
    assert not verify(OTHER_KEY.public_key, b"tokens_out=300", signature)
    assert not verify(KEY.public_key, b"tokens_out=300", sign(OTHER, b"tokens_out=300"))


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        ("", "AAAA"),
        ("not-a-key", "AAAA"),
        (SEED.decode(), "AAAA"),  # a seed is no public key
        (KEY.public_key[:-1] + ("A" if KEY.public_key[-1] != "A" else "B"), None),  # checksum
        (None, ""),
        (None, "AAAA"),
        (None, "!!not base64!!"),
        (None, "é"),
    ],
)
def test_a_malformed_key_or_signature_does_not_verify(
    key: str | None, signature: str | None
) -> None:
    data = b"data"
    key = KEY.public_key if key is None else key
    assert not verify(key, data, sign(SEED, data) if signature is None else signature)


def test_canonical_bytes_sort_keys_and_leave_the_signature_out() -> None:
    a = canonical({"b": 1, "a": {"y": 2, "x": 1}, "signature": "s1"})
    assert a == canonical({"a": {"x": 1, "y": 2}, "b": 1, "signature": "s2"})
    assert a == b'{"a":{"x":1,"y":2},"b":1}'


def test_a_signed_record_verifies_with_the_enrolled_key() -> None:
    stored = signed_record(_record(), KEY).model_dump_json().encode()
    assert json.loads(stored)["public_key"] == KEY.public_key
    assert record_verified(stored, KEY.public_key)


@pytest.mark.parametrize(
    "field",
    [
        {"tokens_out": 301},
        {"tasks_completed": 8},
        {"avg_latency_ms": 1.0},
        {"started_at": "2020-01-01T00:00:00Z"},
        {"queued": {"m": 0}},
        {"models": ["m", "other"]},
    ],
)
def test_a_changed_field_of_the_report_does_not_verify(field: dict[str, Any]) -> None:
    stored = signed_record(_record(), KEY).model_dump_json().encode()
    assert not record_verified(_edited(stored, **field), KEY.public_key)


def test_only_the_enrolled_key_verifies_never_the_one_claimed() -> None:
    by_other = signed_record(_record(), OTHER_KEY).model_dump_json().encode()
    assert record_verified(by_other, OTHER_KEY.public_key)  # valid for the key it names
    assert not record_verified(by_other, KEY.public_key)  # but KEY is the one enrolled
    claiming = _edited(by_other, public_key=KEY.public_key)  # names KEY, signed by OTHER
    assert not record_verified(claiming, KEY.public_key)
    unsigned = _record().model_dump_json().encode()
    assert not record_verified(unsigned, KEY.public_key)
    assert not record_verified(_edited(unsigned, public_key=KEY.public_key), KEY.public_key)
    naming_other = json.loads(_record().model_dump_json()) | {"public_key": OTHER_KEY.public_key}
    naming_other["signature"] = sign(SEED, canonical(naming_other))  # signed by KEY all the same
    assert not record_verified(json.dumps(naming_other).encode(), KEY.public_key)
    mine = signed_record(_record(), KEY).model_dump_json().encode()
    assert not record_verified(mine, None)  # no key enrolled for the node
    assert not record_verified(mine, "")
    assert not record_verified(b"not json", KEY.public_key)
    assert not record_verified(b"[1, 2]", KEY.public_key)


def test_a_record_from_an_older_or_newer_writer_still_verifies() -> None:
    """The signature covers the bytes as written: a reader that does not know a field, or knows
    one the writer did not write, checks it all the same."""
    written = json.loads(_record().model_dump_json()) | {"public_key": KEY.public_key}
    newer = written | {"added_in_a_later_version": [1, 2]}
    older = {k: v for k, v in written.items() if k not in ("tenants", "healthy", "queued")}
    for body in (newer, older):
        stored = json.dumps(body | {"signature": sign(SEED, canonical(body))}).encode()
        assert record_verified(stored, KEY.public_key)
        NodeRecord.model_validate_json(stored)  # and reads as a record


def _presence(tmp_path: Path, seed: bytes | None) -> Presence:
    path = None
    if seed is not None:
        path = tmp_path / "node.nk"
        path.write_bytes(seed + b"\n")
    settings = Settings(heartbeat_s=1.0, node_id="n1", nats_nkey_seed=path)
    bus: Any = SimpleNamespace(names=Names())
    engine = SimulatedEngine(("m",))
    return Presence(bus, engine, settings, 4, WorkerMetrics("simulated"), Tally())


def test_a_worker_with_a_seed_signs_its_record_and_its_metrics(tmp_path: Path) -> None:
    presence = _presence(tmp_path, SEED)
    presence.tally.tokens_out, presence.tally.completed = 42, 3
    stored = presence.stored()
    assert record_verified(stored, KEY.public_key)
    assert json.loads(stored)["tokens_out"] == 42
    assert not record_verified(_edited(stored, tokens_out=4200), KEY.public_key)
    assert not record_verified(_presence(tmp_path, None).stored(), KEY.public_key)


def test_the_live_view_verifies_each_record_as_stored_against_its_nodes_key() -> None:
    bus: Any = SimpleNamespace(names=Names())
    nodes = LiveNodes(bus, ttl_s=60)
    enrolled = {
        "n1": EnrolledKey(public_key=KEY.public_key, enrolled_at=datetime.now(UTC)),
        "n2": EnrolledKey(public_key=KEY.public_key, enrolled_at=datetime.now(UTC)),
    }
    stored = signed_record(_record(), KEY).model_dump_json().encode()
    for key in ("n1", "n2"):  # n2 holds n1's genuine record, replayed
        nodes.items[key] = nodes.parse(key, stored)
    assert nodes.verified("n1", enrolled)
    assert not nodes.verified("n2", enrolled)  # signed, but it is n1's record
    assert not nodes.verified("n3", enrolled)  # no record
    nodes.changed("n1", None)  # deleted
    nodes.items.pop("n1")
    assert not nodes.verified("n1", enrolled)
    table = nodes_table([_record(node_id="n1"), _record(node_id="n2")], 60, {"n1"})
    header, n1, n2 = table.splitlines()
    assert header.split()[-1] == "VERIFIED" and n1.split()[-1] == "yes" and n2.split()[-1] == "no"
