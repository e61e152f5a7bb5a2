"""How large a job can grow, computed before it is accepted: the most prompt bytes its tasks can
be given, templates rendered at their worst.

A template's references are bounded by what they can hold: ``{{ input }}`` by the job's prompt,
an output (``{{ previous }}``, ``{{ steps.x }}``, ``{{ outputs.3 }}``) by its task's `max_tokens`
at `BYTES_PER_TOKEN`, ``{{ outputs }}`` and ``{{ candidates }}`` by all of those together. The
gateway and `dim submit` refuse a job whose worst case passes `DIM_MAX_PROMPT_BYTES` (a 400
that names the field), so a 100 KB request cannot render a 100 MB prompt; `render` checks the
real size again (`RENDER_MAX_BYTES`), since a generated token may be longer than assumed.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from events.jobs import JobSubmitted
from services.jobs.patterns import models_of
from services.jobs.templates import RENDER_MAX_BYTES, references

MAX_TEMPLATE_REFS = 64  # references in one template
BYTES_PER_TOKEN = 16  # the most text one generated token is taken to be, for worst cases
# One token's logprob entry at its largest (a 16-byte token: its text, its bytes as numbers, the
# logprob), and how many bytes of them a result may carry: a task's logprobs ride on its
# `task.completed` and the job's end, each one NATS message.
LOGPROB_ENTRY_BYTES = 160
MAX_LOGPROBS_BYTES = 4 * 1024 * 1024


__all__ = [
    "RENDER_MAX_BYTES",
    "TooLarge",
    "check_bounds",
    "reserved_tokens",
    "token_asks",
    "worst_case_prompt_bytes",
]


class TooLarge(ValueError):
    """A job whose worst case passes a bound; `param` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def worst_case_prompt_bytes(job: JobSubmitted) -> int:
    """The most prompt bytes all of the job's tasks together can be given."""
    prompt = job.prompt.size() if job.prompt is not None else 0  # tools and images included
    out = job.params.max_tokens * BYTES_PER_TOKEN  # one task's output, at most
    if job.pattern == "collaborative" and job.collaborative is not None:
        spec = job.collaborative
        total = sum(_size(p.render()) for p in spec.inputs)
        if spec.aggregate == "reduce":
            n = len(spec.inputs)
            outputs = n * out + max(0, n - 1) * _size(spec.separator)
            total += _rendered(
                spec.reduce_prompt,
                "reduce_prompt",
                lambda ref: outputs if ref == "outputs" else prompt if ref == "input" else out,
            )
        return total
    if job.pattern == "comparative" and job.comparative is not None:
        spec_c = job.comparative
        total = len(spec_c.candidates) * prompt
        if spec_c.consensus == "judge":
            listing = len(spec_c.candidates) * (out + 64)  # each answer with its model's name
            total += _rendered(
                spec_c.judge_prompt,
                "judge_prompt",
                lambda ref: prompt if ref == "input" else listing,
            )
        return total
    if job.pattern == "chained" and job.chained is not None:
        steps = job.chained.steps
        limits = {s.name: (s.max_tokens or job.params.max_tokens) * BYTES_PER_TOKEN for s in steps}
        total = 0
        for i, step in enumerate(steps):
            previous = limits[steps[i - 1].name] if i else 0

            def bound(ref: str, previous: int = previous) -> int:
                if ref == "input":
                    return prompt
                if ref == "previous":
                    return previous
                name = ref.removeprefix("steps.").removesuffix(".output")
                return limits.get(name, 0)

            total += _rendered(step.prompt, f"steps.{i}.prompt", bound)
        return total
    return prompt * job.params.n


def token_asks(job: JobSubmitted) -> list[tuple[str, int]]:
    """(model, max_tokens) of each kind of task the job will run."""
    if job.pattern == "chained" and job.chained is not None:
        return [
            (s.model or job.model, s.max_tokens or job.params.max_tokens) for s in job.chained.steps
        ]
    return [(m, job.params.max_tokens) for m in models_of(job)]


def reserved_tokens(job: JobSubmitted) -> int:
    """The most completion tokens the job's tasks can produce: `max_tokens` for each (what a
    tenant's token quota holds back while it runs)."""
    most = job.params.max_tokens
    if job.pattern == "collaborative" and job.collaborative is not None:
        spec = job.collaborative
        return most * (len(spec.inputs) + (spec.aggregate == "reduce"))
    if job.pattern == "comparative" and job.comparative is not None:
        judge = job.comparative.consensus == "judge"
        return most * (len(job.comparative.candidates) + judge)
    if job.pattern == "chained" and job.chained is not None:
        return sum(s.max_tokens or most for s in job.chained.steps)
    return most * job.params.n


def check_bounds(job: JobSubmitted, *, max_prompt_bytes: int) -> None:
    """Raise `TooLarge` unless the job's worst case fits `max_prompt_bytes` (and its templates
    `MAX_TEMPLATE_REFS` references each)."""
    params = job.params
    if params.logprobs:  # every choice's, on the job's end
        entries = params.n * params.max_tokens * (1 + params.top_logprobs)
        if entries * LOGPROB_ENTRY_BYTES > MAX_LOGPROBS_BYTES:
            most = MAX_LOGPROBS_BYTES // LOGPROB_ENTRY_BYTES // (1 + params.top_logprobs)
            most //= params.n
            raise TooLarge(
                f"logprobs of {params.n} x {params.max_tokens:,} tokens with "
                f"{params.top_logprobs} alternatives each could take {entries * LOGPROB_ENTRY_BYTES:,} bytes, over the "
                f"{MAX_LOGPROBS_BYTES:,} a result may carry: at most {most:,} tokens a choice "
                f"with top_logprobs {params.top_logprobs} and n {params.n}",
                "top_logprobs" if params.top_logprobs else "max_tokens",
            )
    worst = worst_case_prompt_bytes(job)
    if worst > max_prompt_bytes:
        raise TooLarge(
            f"this job's prompts could reach {worst:,} bytes (templates rendered with every "
            f"output at max_tokens x {BYTES_PER_TOKEN} bytes), over the {max_prompt_bytes:,} "
            "allowed (DIM_MAX_PROMPT_BYTES): use fewer or smaller inputs, fewer references, "
            "or a lower max_tokens",
            _field(job),
        )


def _rendered(template: str, where: str, bound: Callable[[str], int]) -> int:
    """The largest `template` can render to, each reference at `bound(ref)` bytes."""
    refs = references(template)
    if len(refs) > MAX_TEMPLATE_REFS:
        raise TooLarge(
            f"{where}: {len(refs)} references, over the {MAX_TEMPLATE_REFS} a template may have",
            where,
        )
    worst = _size(template) + sum(bound(ref) for ref in refs)
    if worst > RENDER_MAX_BYTES:
        raise TooLarge(
            f"{where}: could render to {worst:,} bytes (every output at max_tokens x "
            f"{BYTES_PER_TOKEN} bytes), over the {RENDER_MAX_BYTES:,} one prompt may have: "
            "fewer references or a lower max_tokens",
            where,
        )
    return worst


def _field(job: JobSubmitted) -> str:
    return {"collaborative": "inputs", "chained": "steps", "comparative": "models"}.get(
        job.pattern, "prompt"
    )


def _size(text: str) -> int:
    return len(text.encode())
