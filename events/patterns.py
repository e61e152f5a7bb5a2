"""What a multi-task job asks for: routing and the specs of the collaborative, comparative and
chained patterns. Value types embedded in ``job.submitted``; validated once, at the door.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.inference import MAX_TOKENS, Prompt

Pattern = Literal["single", "collaborative", "comparative", "chained"]
Strategy = Literal["least_loaded", "round_robin", "capacity_weighted", "affinity"]
OnError = Literal["fail", "partial"]


MAX_SHARDS = 1000  # tasks of one collaborative job (its inputs, or the shards of one split)


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Routing(_Value):
    """Where a job's tasks may run and how a node is picked among those that may run them.

    With no strategy, no filter and no pin, tasks go to the model's shared subject: the first
    worker with a free slot pulls each one, which is least-loaded with exact load.
    """

    strategy: Strategy | None = None
    affinity_key: str | None = Field(
        default=None, max_length=512, description="session key for affinity (default: prompt)"
    )
    min_context: int | None = Field(default=None, ge=1, description="tokens the node must take")
    min_gpu_memory_mib: int | None = Field(
        default=None, ge=1, description="GPU memory one GPU must have (MiB)"
    )


class RetryPolicy(_Value):
    """How long a failed task waits before its next attempt: `backoff_s` doubling per attempt up
    to `max_backoff_s`, less a random share of up to `jitter` (so retries of many tasks spread)."""

    backoff_s: float = Field(default=0.2, ge=0, le=3600)
    max_backoff_s: float = Field(default=30.0, ge=0, le=86_400)
    jitter: float = Field(default=0.5, ge=0, le=1)


class Split(_Value):
    """How one large input becomes shards: by paragraphs packed up to `size` characters, or by
    plain `size`-character pieces."""

    by: Literal["paragraphs", "chars"] = "paragraphs"
    size: int = Field(default=4000, ge=1, le=10_000_000)


class Collaborative(_Value):
    """One model over many inputs (shards), spread across nodes, then aggregated."""

    inputs: tuple[Prompt, ...] = Field(min_length=1, max_length=MAX_SHARDS)
    aggregate: Literal["concat", "reduce"] = "concat"
    separator: str = "\n"
    reduce_prompt: str = Field(
        default="Combine these partial results into one answer:\n\n{{ outputs }}",
        description="template of the final prompt (aggregate=reduce); may use {{ outputs }}, "
        "{{ outputs.N }} and {{ input }}",
    )
    on_error: OnError = "fail"


class Candidate(_Value):
    """One model of a comparison, with its vote weight and an optional node."""

    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    node_id: str | None = None


class Comparative(_Value):
    """Several models on one input, then consensus."""

    candidates: tuple[Candidate, ...] = Field(min_length=2, max_length=16)
    consensus: Literal["majority", "weighted", "judge"] = "majority"
    judge_model: str | None = None
    judge_prompt: str = Field(
        default=(
            "Question:\n{{ input }}\n\nCandidate answers:\n{{ candidates }}\n\n"
            "Reply with the number of the best answer only."
        ),
        description="template of the judge's prompt; may use {{ input }} and {{ candidates }}",
    )
    min_agreement: float = Field(default=0.5, ge=0, le=1)
    on_error: OnError = "fail"

    @model_validator(mode="after")
    def _judge(self) -> Comparative:
        if self.consensus == "judge" and not self.judge_model:
            raise ValueError("consensus 'judge' needs a judge_model")
        return self


class Step(_Value):
    """One step of a chain."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    prompt: str = Field(
        min_length=1,
        description="template; may use {{ input }}, {{ previous }} and {{ steps.<name> }}",
    )
    model: str | None = Field(default=None, description="default: the job's model")
    node_id: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_attempts: int | None = Field(default=None, ge=1, le=20)


class Chained(_Value):
    """Ordered steps; each step's prompt may use the input and any earlier step's output."""

    steps: tuple[Step, ...] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _unique(self) -> Chained:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")
        return self


class Consensus(_Value):
    """The outcome of a comparison."""

    method: str
    reached: bool
    agreement: float
    min_agreement: float
    winner: int | None = None  # index of the chosen candidate
    winner_model: str | None = None
    groups: tuple[tuple[int, ...], ...] = ()  # candidate indexes giving the same answer
    reason: str = ""
