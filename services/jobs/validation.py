"""Whether a job request can run, checked before it is accepted: by the gateway (REST, the
OpenAI endpoints, the WebSocket) and by `dim submit`, alike. The request's shape (types, ranges,
which fields a pattern takes) is checked by its pydantic models; this checks what needs the whole
request: every pattern has what it needs, and every template names only what it will have."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from events.jobs import JobSubmitted
from services.jobs.templates import check


def _outputs_ref(n: int) -> Callable[[str], bool]:
    def ok(ref: str) -> bool:
        if ref == "outputs":
            return True
        head, _, tail = ref.partition(".")
        return head == "outputs" and tail.isdigit() and int(tail) < n

    return ok


def validate(job: JobSubmitted) -> None:
    """Raise `ValueError` (with the field in words) unless the job's pattern spec is usable."""
    if job.pattern == "collaborative":
        spec = job.collaborative
        if spec is None:
            raise ValueError("a collaborative job needs 'inputs' (or 'input' with 'split')")
        if spec.aggregate == "reduce":
            ok = _outputs_ref(len(spec.inputs))
            check(
                spec.reduce_prompt,
                lambda r: ok(r) or (r == "input" and job.prompt is not None),
                "reduce_prompt",
            )
        return
    if job.prompt is None:
        raise ValueError(f"a {job.pattern} job needs a prompt")
    if job.pattern == "comparative":
        if job.comparative is None:
            raise ValueError("a comparative job needs 'models' (at least two)")
        if job.comparative.consensus == "judge":
            check(
                job.comparative.judge_prompt, {"input", "candidates"}.__contains__, "judge_prompt"
            )
    elif job.pattern == "chained":
        if job.chained is None:
            raise ValueError("a chained job needs 'steps'")
        earlier: set[str] = set()
        for i, step in enumerate(job.chained.steps):
            allowed = (
                {"input"} | {f"steps.{n}" for n in earlier} | {f"steps.{n}.output" for n in earlier}
            )
            if i:
                allowed.add("previous")
            check(step.prompt, allowed.__contains__, f"step '{step.name}' prompt")
            earlier.add(step.name)


def first_problem(exc: ValidationError) -> tuple[str, str | None]:
    """The first thing a request's models refused, in words, and the field it names (dotted)."""
    first = exc.errors()[0]
    return first["msg"], ".".join(str(p) for p in first["loc"]) or None
