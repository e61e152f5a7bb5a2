"""What earlier attempts of a task already streamed, read back from the TOKENS stream, so a task
moved to this worker mid-answer continues where the last one stopped."""

from __future__ import annotations

from dataclasses import dataclass

from events.bus import Bus
from events.history import read_events
from events.inference import FinishReason
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


async def partial_output(bus: Bus, job_id: str, task_id: str) -> Partial:
    """The task's output so far, from its token chunks (every attempt; offsets line them up)."""
    text, tokens, finish = TextAssembler(), 0, None
    ids: list[int] | None = []
    async for _, envelope in read_events(bus, bus.names.tokens_stream, bus.names.tokens(job_id)):
        chunk = envelope.data
        if not isinstance(chunk, TokensProduced) or chunk.task_id != task_id:
            continue
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
