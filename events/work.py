"""Events outside the job history: work for workers (TASKS), token chunks (TOKENS), rejects (DEAD)."""

from __future__ import annotations

from pydantic import Field

from events.envelope import Event, event_type
from events.inference import FinishReason, TokenLogprob, unset
from events.jobs import TaskSpec
from events.tools import CallPart


@event_type
class TaskRequested(Event):
    """Work for a worker: one attempt of a task, on ``NS.tasks.model.<m>`` or ``NS.tasks.node.<id>``."""

    type = "task.requested"
    job_id: str
    attempt: int
    task: TaskSpec


@event_type
class TokensProduced(Event):
    """A chunk of generated text; chunks of one attempt are numbered from 0 with their offset.

    ``offset`` is the character offset of ``text`` in the attempt's output, so a reader can
    drop text it already has when an attempt is redelivered to another worker. ``token_ids``
    are the ids of exactly the tokens whose text is ``text``, from engines that know them
    (vLLM): an attempt after a lost worker continues from these ids, not from re-tokenized
    text, which a BPE tokenizer may split differently.
    """

    type = "tokens.produced"
    job_id: str
    task_id: str
    attempt: int
    node_id: str
    index: int
    offset: int
    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    token_ids: tuple[int, ...] | None = None  # added later: readers of older chunks see None
    # each token's, when the request asks
    logprobs: tuple[TokenLogprob, ...] | None = Field(default=None, exclude_if=unset)
    # set: `text` is arguments of this tool call (its offset counts in them), not the answer's
    # text; readers of the text skip such chunks. The chunk that ends a stream is never one.
    call: CallPart | None = Field(default=None, exclude_if=unset)


@event_type
class MessageRejected(Event):
    """A message that could not be processed was terminated; this keeps it and the reason."""

    type = "message.rejected"
    consumer: str
    stream: str
    subject: str
    stream_seq: int
    deliveries: int
    error: str
    payload: str
    headers: dict[str, str] = {}


@event_type
class ReportRefused(Event):
    """A node's report on a job's log (`task.started` / `task.completed` / `task.failed`) that
    a reader did not believe: not signed by the key enrolled for the node it names. The reader
    `by` left the job as it was; this keeps what was refused and why (a forgery, or a node
    whose key is not enrolled)."""

    type = "report.refused"
    by: str
    subject: str
    stream_seq: int
    event_id: str
    event_type: str
    actor: str
    job_id: str
    task_id: str
    attempt: int
    node_id: str | None
    reason: str
