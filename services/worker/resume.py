"""What earlier attempts of a task already streamed, read back from the TOKENS stream, so a task
moved to this worker mid-answer continues where the last one stopped.

Only the chunks of nodes that started an attempt of the task count, each read from its own
subject (a node may write only there) and naming that node; with `verify`, a start counts only
if the key enrolled for its node signed it. So another admitted node cannot put words into the
answer this attempt continues."""

from __future__ import annotations

from dataclasses import dataclass

from events.bus import Bus
from events.history import read_events
from events.inference import FinishReason
from events.jobs import TaskStarted
from events.records import EnrolledKey
from events.signing import report_verified
from events.text import TextAssembler
from events.work import TokensProduced


@dataclass(frozen=True, slots=True)
class Partial:
    """What earlier attempts of a task streamed: the contiguous text from the start, its
    tokens, and the finish reason if the stream reached its end. `token_ids` are the text's
    exact tokens when every chunk that made it up carried them (else None)."""

    text: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None
    token_ids: tuple[int, ...] | None = None


async def partial_output(bus: Bus, job_id: str, task_id: str, *, verify: bool = False) -> Partial:
    """The task's output so far, from its token chunks (every attempt; offsets line them up)."""
    chunks: list[tuple[int, TokensProduced]] = []
    for node in await _writers(bus, job_id, task_id, verify=verify):
        subject = bus.names.tokens(job_id, node)
        async for seq, envelope in read_events(bus, bus.names.tokens_stream, subject):
            chunk = envelope.data
            if (
                isinstance(chunk, TokensProduced)
                and (chunk.task_id, chunk.node_id) == (task_id, node)
                and chunk.call is None  # a tool call's arguments are not the answer's text
            ):
                chunks.append((seq, chunk))
    chunks.sort(key=lambda c: c[0])  # as they were stored
    text, tokens, finish = TextAssembler(), 0, None
    ids: list[int] | None = []
    for _, chunk in chunks:
        in_order = chunk.offset == len(text.text)
        new = text.add(chunk.offset, chunk.text)
        if new and chunk.text:
            tokens += round(chunk.tokens * len(new) / len(chunk.text))
            if ids is not None:
                # ids line up with the text only while each chunk is taken whole and alone, in
                # order (not part of one, nor with chunks held back for a gap): else use text
                if in_order and new == chunk.text and chunk.token_ids:
                    ids.extend(chunk.token_ids)
                else:
                    ids = None
        if chunk.finish_reason is not None and chunk.offset + len(chunk.text) <= len(text.text):
            finish = chunk.finish_reason
    exact = tuple(ids) if ids is not None and text.text else None
    return Partial(text.text, len(exact) if exact is not None else tokens, finish, exact)


async def _writers(bus: Bus, job_id: str, task_id: str, *, verify: bool) -> list[str]:
    """The nodes that started an attempt of the task (with `verify`: in a report signed by the
    key enrolled for the node)."""
    nodes: list[str] = []
    enrolled = await bus.bucket("enrolled") if verify else None
    subject = bus.names.reports(job_id, "task.started")
    async for _, envelope in read_events(bus, bus.names.jobs_stream, subject):
        started = envelope.data
        if not isinstance(started, TaskStarted) or started.task_id != task_id:
            continue
        if started.node_id in nodes:
            continue
        if enrolled is not None:
            entry = await enrolled.get(started.node_id)
            key = EnrolledKey.model_validate_json(entry.value).public_key if entry else None
            if not report_verified(started, key):
                continue
        nodes.append(started.node_id)
    return nodes
