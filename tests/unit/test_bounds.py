"""Bounds computed before a job is accepted: a small request cannot render a huge prompt."""

from __future__ import annotations

import pytest

from events.inference import Prompt, SamplingParams
from events.jobs import JobSubmitted
from events.patterns import Chained, Collaborative, Split, Step
from services.jobs.bounds import (
    BYTES_PER_TOKEN,
    MAX_TEMPLATE_REFS,
    TooLarge,
    check_bounds,
    worst_case_prompt_bytes,
)
from services.jobs.patterns import split
from services.jobs.templates import TemplateError, render

LIMIT = 16 * 1024 * 1024  # the default DIM_MAX_PROMPT_BYTES


def _chained(template: str, steps: int, text: str, max_tokens: int = 256) -> JobSubmitted:
    return JobSubmitted(
        job_id="J",
        pattern="chained",
        model="m",
        prompt=Prompt(text=text),
        params=SamplingParams(max_tokens=max_tokens),
        chained=Chained(steps=tuple(Step(name=f"s{i}", prompt=template) for i in range(steps))),
    )


def test_the_amplifying_template_is_refused_at_the_door() -> None:
    """The probe's 109 KB chained job: one step of `{{ input }}` x 1,000 over a 100 KB input
    (it rendered 100 MB); and the same within the reference bound, over many steps."""
    big = "x" * 100_000
    with pytest.raises(TooLarge, match="1000 references") as refs:
        check_bounds(_chained("{{ input }}" * 1000, 1, big), max_prompt_bytes=LIMIT)
    assert refs.value.param == "steps.0.prompt"
    many = _chained("{{ input }}" * MAX_TEMPLATE_REFS, 32, big)  # 6.4 MB a step, 32 steps
    assert worst_case_prompt_bytes(many) > 32 * 6_400_000
    with pytest.raises(TooLarge, match="DIM_MAX_PROMPT_BYTES") as total:
        check_bounds(many, max_prompt_bytes=LIMIT)
    assert total.value.param == "steps"


def test_outputs_count_at_max_tokens() -> None:
    job = _chained("{{ previous }}", 3, "q", max_tokens=1000)
    assert worst_case_prompt_bytes(job) == len("{{ previous }}") * 3 + 2 * 1000 * BYTES_PER_TOKEN
    reduce = JobSubmitted(
        job_id="J",
        pattern="collaborative",
        model="m",
        params=SamplingParams(max_tokens=4096),
        collaborative=Collaborative(
            inputs=tuple(Prompt(text="i") for _ in range(1000)),
            aggregate="reduce",
            reduce_prompt="sum up: {{ outputs }}",
        ),
    )
    with pytest.raises(TooLarge, match="reduce_prompt: could render"):  # 1000 x 4096 x 16
        check_bounds(reduce, max_prompt_bytes=LIMIT)


def test_the_documented_maximum_fits() -> None:
    """The largest body's prompt for each of 16 choices: what the limits promise is served."""
    job = JobSubmitted(
        job_id="J",
        model="m",
        prompt=Prompt(text="x" * 1_000_000),
        params=SamplingParams(n=16),
    )
    check_bounds(job, max_prompt_bytes=LIMIT)


def test_render_stops_at_its_limit() -> None:
    with pytest.raises(TemplateError, match="passes 10 bytes"):
        render("{{ a }} and {{ a }}", {"a": "xxxx"}, limit=10)
    assert render("{{ a }}", {"a": "xxxx"}, limit=10) == "xxxx"


@pytest.mark.parametrize("by", ["chars", "paragraphs"])
def test_a_split_into_too_many_shards_is_refused_before_they_are_built(by: str) -> None:
    text = ("para\n\n" if by == "paragraphs" else "x") * 900_000  # a 900 KB request
    with pytest.raises(ValueError, match="more than 1000 shards"):
        split(text, Split(by=by, size=1))  # type: ignore[arg-type]
    assert len(split("a\n\nb", Split(by="paragraphs", size=1))) == 2


def test_logprobs_that_could_not_fit_a_result_are_refused_at_the_door() -> None:
    def job(max_tokens: int, top: int) -> JobSubmitted:
        params = SamplingParams(max_tokens=max_tokens, logprobs=True, top_logprobs=top)
        return JobSubmitted(job_id="j", model="m", prompt=Prompt(text="x"), params=params)

    check_bounds(job(1_000, 20), max_prompt_bytes=1_000)  # 1,000 x 21 entries fit
    with pytest.raises(TooLarge, match="at most 1,248 tokens") as too_many:
        check_bounds(job(2_000, 20), max_prompt_bytes=1_000)
    assert too_many.value.param == "top_logprobs"
    check_bounds(job(26_000, 0), max_prompt_bytes=1_000)
    with pytest.raises(TooLarge) as sampled_only:
        check_bounds(job(30_000, 0), max_prompt_bytes=1_000)
    assert sampled_only.value.param == "max_tokens"
    check_bounds(
        job(30_000, 0).model_copy(update={"params": SamplingParams(max_tokens=30_000)}),
        max_prompt_bytes=1_000,
    )
