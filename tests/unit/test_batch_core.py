"""The pure parts of the Batch API: a line's job id, the fold of a batch's view, the runner's
window, the check of an input file, and the output and error lines."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import openai.types
import openai.types.chat
import pytest

from events.batches import (
    BatchCancelled,
    BatchCancelling,
    BatchCompleted,
    BatchCreated,
    BatchFailed,
    BatchLine,
    BatchStarted,
    LineError,
    dump_lines,
    line_job_id,
    line_of,
    parse_lines,
)
from events.envelope import Envelope, Event
from events.ids import new_id
from events.inference import Prompt, SamplingParams, Usage
from events.jobs import JobCancelled, JobCompleted, JobFailed
from gateway.batch_bodies import render
from gateway.batch_lines import LISTED_ERRORS, admit_lines, parse_input
from gateway.errors import ApiError
from gateway.schemas.batches import BatchObject
from projections.batch_status import (
    BatchView,
    Bitmap,
    LineEnd,
    apply_batch_event,
    apply_line_ends,
)
from services.batches.output import line_result
from services.batches.window import next_step, window

BATCH = "batch_01JBATCH0000000000000000AB"
CHAT = "/v1/chat/completions"


def _env(event: Event, at: int = 1_000) -> Envelope:
    return Envelope(event, actor="t", at=datetime.fromtimestamp(at, UTC))


def _created(total: int) -> BatchCreated:
    return BatchCreated(
        batch_id=BATCH,
        tenant="acme",
        owner="ann",
        input_file_id="file-1",
        endpoint=CHAT,
        total=total,
        requests=f"{BATCH}.requests",
        expires_at=datetime.fromtimestamp(1_000, UTC) + timedelta(hours=24),
    )


def _done(index: int, p: int = 2, c: int = 3) -> JobCompleted:
    return JobCompleted(
        job_id=line_job_id(BATCH, index),
        output=f"answer {index}",
        finish_reason="stop",
        usage=Usage(prompt_tokens=p, completion_tokens=c),
    )


def _failed(index: int) -> JobFailed:
    return JobFailed(
        job_id=line_job_id(BATCH, index), reason="every attempt failed", code="task_failed"
    )


def _view(total: int, *, started: bool = True) -> BatchView:
    view = apply_batch_event(None, _env(_created(total)), 1)
    if started:
        view = apply_batch_event(view, _env(BatchStarted(batch_id=BATCH), 1_005), 2)
    assert view is not None
    return view


def test_a_lines_job_id_names_its_batch_and_line() -> None:
    job_id = line_job_id(BATCH, 41)
    assert line_of(job_id) == (BATCH, 41)
    assert line_of(new_id()) is None  # any other job
    assert line_of("x-y-3") is None and line_of("-3") is None and line_of("abc-") is None


def test_a_bitmap_holds_lines_and_says_which_are_missing() -> None:
    bits = Bitmap.decode("", 20)
    assert bits.add(0) and bits.add(9) and bits.add(19)
    assert not bits.add(9)  # already there
    again = Bitmap.decode(bits.encode(), 20)
    assert [i for i in range(20) if i in again] == [0, 9, 19]
    assert list(again.missing(12)) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert list(Bitmap.decode("", 0).missing(3)) == [0, 1, 2]
    assert 10_000 not in again


def test_the_batch_lifecycle_folds_into_its_view() -> None:
    view = apply_batch_event(None, _env(_created(3), 1_000), 1)
    assert view is not None
    assert (view.status, view.total, view.created_at, view.tenant) == (
        "validating",
        3,
        1_000,
        "acme",
    )
    assert view.expires_at == 1_000 + 24 * 3600
    view = apply_batch_event(view, _env(BatchStarted(batch_id=BATCH), 1_001), 2)
    assert view is not None and (view.status, view.in_progress_at) == ("in_progress", 1_001)
    assert apply_batch_event(view, _env(BatchStarted(batch_id=BATCH), 1_009), 2) == view  # again
    view = apply_batch_event(view, _env(BatchCancelling(batch_id=BATCH, by="ann"), 1_002), 3)
    assert view is not None and (view.status, view.cancelling_at) == ("cancelling", 1_002)
    ended = BatchCancelled(
        batch_id=BATCH, output_file_id="file-o", completed=1, failed=1, finalizing_at=None
    )
    view = apply_batch_event(view, _env(ended, 1_003), 4)
    assert view is not None and view.status == "cancelled" and view.terminal
    assert (view.cancelled_at, view.output_file_id, view.completed, view.failed) == (
        1_003,
        "file-o",
        1,
        1,
    )
    late = apply_batch_event(view, _env(BatchCompleted(batch_id=BATCH), 1_004), 5)
    assert late is not None and late.status == "cancelled"  # nothing changes an ended batch


def test_a_refused_file_is_a_failed_batch_with_its_errors() -> None:
    errors = (LineError(code="invalid_json", message="not JSON", line=2),)
    failed = BatchFailed(
        batch_id=BATCH,
        tenant="acme",
        owner="ann",
        input_file_id="file-1",
        endpoint=CHAT,
        errors=errors,
        more_errors=4,
    )
    view = apply_batch_event(None, _env(failed, 1_000), 1)
    assert view is not None and view.status == "failed" and view.failed_at == 1_000
    shown = BatchObject.of(view)
    assert shown.errors is not None
    assert [e.line for e in shown.errors.data] == [2, None]  # and the count of the rest
    assert "4 more" in (shown.errors.data[-1].message or "")


def test_line_ends_count_once_each_and_in_either_order_with_the_creation() -> None:
    ends: list[tuple[int, int, LineEnd]] = [
        (10, 0, _done(0)),
        (11, 2, _failed(2)),
        (12, 0, JobCancelled(job_id=line_job_id(BATCH, 0))),  # a second end of line 0
    ]
    after = apply_line_ends(_view(3), BATCH, ends)
    assert (after.completed, after.failed, after.prompt_tokens, after.completion_tokens) == (
        1,
        1,
        2,
        3,
    )
    assert apply_line_ends(after, BATCH, ends) == after  # redelivered: nothing changes
    before = apply_line_ends(None, BATCH, ends)  # the ends folded first, the creation after
    before = apply_batch_event(before, _env(_created(3)), 1)
    before = apply_batch_event(before, _env(BatchStarted(batch_id=BATCH), 1_005), 2)
    assert before == after
    shown = BatchObject.of(after)
    assert (shown.request_counts.total, shown.request_counts.completed) == (3, 1)
    assert shown.status == "in_progress" and shown.usage.total_tokens == 5
    last = apply_line_ends(after, BATCH, [(13, 1, _done(1))])
    assert BatchObject.of(last).status == "finalizing"  # every line ended: files being written


def test_the_window_is_the_first_lines_not_ended() -> None:
    view = _view(10)
    assert window(view, 4) == (0, 1, 2, 3)
    view = apply_line_ends(view, BATCH, [(5, 1, _done(1)), (6, 3, _failed(3))])
    assert window(view, 4) == (0, 2, 4, 5)
    assert next_step(view, 4).submit == (0, 2, 4, 5)
    assert next_step(_view(10, started=False), 4).start
    ended = apply_line_ends(view, BATCH, [(7 + i, i, _done(i)) for i in range(10)])
    assert next_step(ended, 4).finish == "completed" and not next_step(ended, 4).submit
    cancelling = apply_batch_event(view, _env(BatchCancelling(batch_id=BATCH, by="ann")), 3)
    assert cancelling is not None
    step = next_step(cancelling, 4)
    assert step.cancel == (0, 2, 4, 5) and not step.submit and step.finish == "cancelled"
    assert next_step(BatchView(batch_id=BATCH), 4) == next_step(
        ended.model_copy(update={"status": "completed"}), 4
    )


def test_a_runner_following_the_window_never_has_more_in_flight_than_its_size() -> None:
    """Whatever order lines end in, and however often the runner forgets what it submitted
    (a restart), the lines it submits stay within the bound and none is left behind."""
    rng = random.Random(7)
    for _ in range(50):
        total, size = rng.randint(1, 60), rng.randint(1, 8)
        view = _view(total)
        submitted: set[int] = set()
        ended: set[int] = set()
        seq = 10
        for _ in range(10_000):
            step = next_step(view, size)
            if step.finish:
                break
            submitted.update(step.submit)
            running = submitted - ended
            assert len(running) <= size and running <= set(step.submit)
            done = rng.choice(sorted(running))
            ended.add(done)
            seq += 1
            view = apply_line_ends(view, BATCH, [(seq, done, _done(done))])
        assert ended == set(range(total)) == submitted


def _line(custom_id: str, body: dict[str, Any] | None = None, **over: Any) -> bytes:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    } | over
    return json.dumps(line).encode()


def _admit(line: BatchLine) -> None:
    if line.model != "m":
        raise ApiError(
            404, f"the model '{line.model}' does not exist", code="model_not_found", param="model"
        )
    if line.prompt.tools:  # as a mesh whose nodes cannot call tools answers
        raise ApiError(400, "tools: no live node can", code="unsupported_parameter", param="tools")


def _parse(raw: bytes, endpoint: str = CHAT):  # type: ignore[no-untyped-def]
    parsed = parse_input(raw, endpoint, default_max_tokens=16, max_prompt_bytes=10_000)
    admit_lines(parsed, _admit)
    return parsed


def test_a_valid_file_becomes_the_jobs_the_endpoint_would_run() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0.2,
        "user": "u1",
        "metadata": {"a": "b"},  # accepted and unused, as by the endpoint
    }
    parsed = _parse(_line("a", body) + b"\n\n" + _line("b") + b"\n")
    assert not parsed.errors
    a, b = parsed.lines
    assert (a.custom_id, a.model, a.params.max_tokens, a.params.temperature, a.end_user) == (
        "a",
        "m",
        5,
        0.2,
        "u1",
    )
    assert a.prompt.messages is not None and a.prompt.messages[0].content == "hi"
    assert b.params.max_tokens == 16  # the default
    assert parse_lines(dump_lines(parsed.lines)) == parsed.lines
    text = _parse(
        _line("t", {"model": "m", "prompt": "once"}, url="/v1/completions"), "/v1/completions"
    )
    assert not text.errors and text.lines[0].prompt == Prompt(text="once")


def test_every_refused_line_is_named_with_why() -> None:
    tools = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    lines = [
        b"{not json",  # 1
        _line("", None),  # 2: no custom_id
        _line("dup"),  # 3
        _line("dup"),  # 4: twice
        _line("get", method="GET"),  # 5
        _line("url", url="/v1/embeddings"),  # 6
        _line(
            "stream", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        ),  # 7
        _line("tools", tools),  # 8: refused as the endpoint refuses it (no node can call tools)
        _line("missing", {"model": "m"}),  # 9: no messages
        _line("model", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),  # 10
        _line("extra", extra=1),  # 11
        b"[1, 2]",  # 12
        _line("big", {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}]}),  # 13
        _line("fine"),  # 14
    ]
    parsed = _parse(b"\n".join(lines))
    got = {e.line: (e.code, e.param) for e in parsed.errors}
    assert got == {
        1: ("invalid_json", None),
        2: ("invalid_request", "custom_id"),
        4: ("duplicate_custom_id", "custom_id"),
        5: ("invalid_request", "method"),
        6: ("invalid_url", "url"),
        7: ("invalid_request", "body.stream"),
        8: ("unsupported_parameter", "body.tools"),
        9: ("invalid_request", "body.messages"),
        10: ("model_not_found", "body.model"),
        11: ("invalid_request", "extra"),
        12: ("invalid_json", None),
        13: ("request_too_large", "body.prompt"),
    }
    assert [line.custom_id for line in parsed.lines] == ["dup", "fine"]


def test_an_empty_file_and_a_flood_of_errors_are_bounded() -> None:
    assert [e.code for e in _parse(b"\n \n").errors] == ["empty_file"]
    parsed = _parse(b"\n".join(b"x" for _ in range(LISTED_ERRORS + 7)))
    assert len(parsed.errors) == LISTED_ERRORS and parsed.more_errors == 7


def test_output_lines_hold_the_endpoints_own_answers() -> None:
    line = BatchLine(custom_id="c1", model="m", prompt=Prompt(text="x"), params=SamplingParams())
    job_id = line_job_id(BATCH, 0)
    ok = line_result(CHAT, line, job_id, _done(0), 1_234, render)
    assert ok.ok and ok.text.endswith(b"\n")
    record = json.loads(ok.text)
    assert (record["custom_id"], record["error"], record["response"]["status_code"]) == (
        "c1",
        None,
        200,
    )
    assert record["response"]["request_id"] == job_id
    chat = openai.types.chat.ChatCompletion.model_validate(record["response"]["body"])
    assert chat.choices[0].message.content == "answer 0" and chat.created == 1_234
    assert (
        chat.id == f"chatcmpl-{job_id}" and chat.usage is not None and chat.usage.total_tokens == 5
    )
    text = json.loads(line_result("/v1/completions", line, job_id, _done(0), 1, render).text)
    assert (
        openai.types.Completion.model_validate(text["response"]["body"]).choices[0].text
        == "answer 0"
    )
    bad = line_result(CHAT, line, job_id, _failed(0), 1, render)
    record = json.loads(bad.text)
    assert not bad.ok and record["response"]["status_code"] == 502
    assert record["response"]["body"]["error"]["code"] == "task_failed"
    gone = json.loads(line_result(CHAT, line, job_id, JobCancelled(job_id=job_id), 1, render).text)
    assert gone["response"] is None and gone["error"]["code"] == "batch_cancelled"


@pytest.mark.parametrize("status", ["in_progress", "completed"])
def test_a_batch_object_reads_as_the_sdks_batch(status: str) -> None:
    view = _view(2).model_copy(update={"status": status})
    batch = openai.types.Batch.model_validate(BatchObject.of(view).model_dump(mode="json"))
    assert (
        batch.id == BATCH and batch.request_counts is not None and batch.request_counts.total == 2
    )
