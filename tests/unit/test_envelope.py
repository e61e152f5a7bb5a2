from __future__ import annotations

import json
from typing import Any

import pytest

from events.envelope import Envelope, Event, decode, event_type, known_types, upcaster
from events.errors import EventDecodeError, UnknownEventType, UnsupportedEventVersion
from events.inference import Prompt, SamplingParams, Usage
from events.jobs import JobSubmitted, TaskCompleted


def _submitted() -> JobSubmitted:
    return JobSubmitted(
        job_id="J1",
        model="m",
        prompt=Prompt(text="hi"),
        params=SamplingParams(max_tokens=5, stop=("x",)),
    )


def test_round_trip_keeps_every_field() -> None:
    env = Envelope(_submitted(), actor="alice")
    back = decode(env.encode())
    assert back == env
    doc = json.loads(env.encode())
    assert set(doc) == {"id", "type", "version", "at", "actor", "data"}
    assert doc["type"] == "job.submitted"
    assert doc["version"] == 1
    assert doc["at"].endswith("Z")


def test_every_job_lifecycle_type_is_registered() -> None:
    assert {
        "job.submitted",
        "job.planned",
        "task.dispatched",
        "task.started",
        "task.completed",
        "task.failed",
        "job.completed",
        "job.failed",
        "job.cancelled",
        "task.requested",
        "tokens.produced",
        "message.rejected",
    } <= set(known_types())


def _doc(**over: Any) -> bytes:
    doc = json.loads(Envelope(_submitted(), actor="a").encode())
    doc.update(over)
    return json.dumps(doc).encode()


def test_unknown_type_is_rejected_naming_the_type() -> None:
    with pytest.raises(UnknownEventType, match="'job.exploded'"):
        decode(_doc(type="job.exploded"))


def test_newer_version_than_known_is_rejected_clearly() -> None:
    with pytest.raises(UnsupportedEventVersion, match="upgrade dim"):
        decode(_doc(version=99))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not a JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not a JSON"),
        (json.dumps({"type": "job.submitted"}).encode(), "missing"),
    ],
)
def test_malformed_bytes_are_rejected(raw: bytes, match: str) -> None:
    with pytest.raises(EventDecodeError, match=match):
        decode(raw)


def test_invalid_payload_is_rejected() -> None:
    doc = json.loads(_doc())
    del doc["data"]["model"]
    with pytest.raises(EventDecodeError, match="model"):
        decode(json.dumps(doc).encode())


def test_unknown_fields_are_ignored() -> None:
    doc = json.loads(_doc())
    doc["data"]["added_later"] = {"x": 1}
    assert decode(json.dumps(doc).encode()).data == _submitted()


@event_type
class _Renamed(Event):
    """A test event at version 3: v1 had `name`, v2 renamed it `title`, v3 added `tags`."""

    type = "test.renamed"
    version = 3
    title: str
    tags: tuple[str, ...]


@upcaster("test.renamed", 1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    data["title"] = data.pop("name")
    return data


@upcaster("test.renamed", 2)
def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "tags": []}


def test_old_versions_are_upcast_through_the_chain() -> None:
    raw = json.dumps(
        {
            "id": "01",
            "type": "test.renamed",
            "version": 1,
            "at": "2026-01-01T00:00:00Z",
            "actor": "a",
            "data": {"name": "old"},
        }
    ).encode()
    event = decode(raw).data
    assert isinstance(event, _Renamed)
    assert event.title == "old"
    assert event.tags == ()
    v2 = raw.replace(b'"version": 1', b'"version": 2').replace(b'"name"', b'"title"')
    assert decode(v2).data == _Renamed(title="old", tags=())


def test_a_missing_upcaster_is_an_error() -> None:
    @event_type
    class _Gap(Event):
        type = "test.gap"
        version = 2

    raw = json.dumps(
        {
            "id": "01",
            "type": "test.gap",
            "version": 1,
            "at": "2026-01-01T00:00:00Z",
            "actor": "a",
            "data": {},
        }
    ).encode()
    with pytest.raises(EventDecodeError, match="no upcaster"):
        decode(raw)


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(TypeError, match="twice"):

        @event_type
        class _Dup(Event):
            type = "job.submitted"


def test_usage_adds_up() -> None:
    u = Usage(prompt_tokens=2, completion_tokens=3) + Usage(prompt_tokens=1, completion_tokens=1)
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (3, 4, 7)
    completed = TaskCompleted(
        job_id="J",
        task_id="t",
        attempt=1,
        node_id="n",
        output="o",
        finish_reason="stop",
        usage=u,
        ttft_ms=1,
        duration_ms=2,
    )
    assert decode(Envelope(completed, actor="w").encode()).data == completed


def test_prompt_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Prompt()
    with pytest.raises(ValueError, match="exactly one"):
        Prompt(text="a", messages=())


def test_envelopes_written_by_other_encoders_decode_the_same() -> None:
    # The fast path reads what Envelope.encode writes; any other key order takes the careful path.
    from events.inference import Prompt
    from events.jobs import JobSubmitted

    original = Envelope(JobSubmitted(job_id="J", model="m", prompt=Prompt(text="hi")), actor="a")
    doc = json.loads(original.encode())
    reordered = json.dumps({"data": doc["data"], **{k: v for k, v in doc.items() if k != "data"}})
    assert decode(reordered.encode()) == decode(original.encode()) == original


@pytest.mark.parametrize(
    "actor", ["gateway", 'quote " back\\\\slash', "line\nbreak\ttab\x01", "ünïcødé ✓ 𝄞", ""]
)
def test_the_head_is_written_as_json_dumps_writes_it(actor: str) -> None:
    env = Envelope(_submitted(), actor=actor, id='id "1"')
    raw = env.encode()
    head = {
        "id": env.id,
        "type": env.type,
        "version": env.version,
        "at": env.at.isoformat().replace("+00:00", "Z"),
        "actor": actor,
    }
    expected = json.dumps(head, separators=(",", ":"))[:-1] + ',"data":'
    assert raw.startswith(expected.encode())
    assert json.loads(raw)["actor"] == actor
    assert decode(raw) == env
