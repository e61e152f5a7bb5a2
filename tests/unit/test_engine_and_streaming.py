"""The simulated engine, stop strings, token coalescing and text assembly."""

from __future__ import annotations

import asyncio

import pytest

from events.errors import EngineError
from events.inference import Prompt, SamplingParams
from events.text import TextAssembler
from services.engines.protocol import Chunk, Engine, GenerationRequest
from services.engines.simulated import SimulatedEngine, count_tokens
from services.engines.stops import StopMatcher
from services.worker.coalesce import Coalescer


def _req(text: str = "hello world", rid: str = "r1", **params: object) -> GenerationRequest:
    return GenerationRequest(rid, "m", Prompt(text=text), SamplingParams(**params))  # type: ignore[arg-type]


async def _run(engine: SimulatedEngine, req: GenerationRequest) -> list[Chunk]:
    return [c async for c in engine.generate(req)]


def _engine(**kw: object) -> SimulatedEngine:
    return SimulatedEngine(("m",), ttft_ms=0, tokens_per_s=0, **kw)  # type: ignore[arg-type]


async def test_output_is_deterministic_and_counts_usage() -> None:
    engine = _engine()
    assert isinstance(engine, Engine)
    a = await _run(engine, _req())
    b = await _run(engine, _req(rid="other"))
    text = "".join(c.text for c in a)
    assert text == "".join(c.text for c in b)
    assert text
    last = a[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert last.usage.prompt_tokens == count_tokens("hello world") == 2
    assert last.usage.completion_tokens == sum(c.tokens for c in a)
    other = "".join(c.text for c in await _run(engine, _req(text="something else")))
    assert other != text
    seeded = "".join(c.text for c in await _run(engine, _req(seed=7)))
    assert seeded != text


async def test_max_tokens_ends_with_length() -> None:
    chunks = await _run(_engine(), _req(max_tokens=3))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_stop_strings_cut_the_output_before_them() -> None:
    full = "".join(c.text for c in await _run(_engine(), _req()))
    word = full.split()[3]
    chunks = await _run(_engine(), _req(stop=(" " + word,)))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert text == full[: full.index(" " + word)]


async def test_error_knob_raises_a_retriable_engine_error() -> None:
    with pytest.raises(EngineError) as err:
        await _run(_engine(error_rate=1.0), _req())
    assert err.value.retriable


async def test_unknown_model_is_a_final_error() -> None:
    with pytest.raises(EngineError, match="not served") as err:
        await _run(_engine(), GenerationRequest("r", "x", Prompt(text="a"), SamplingParams()))
    assert not err.value.retriable


async def test_hang_knob_hangs_until_aborted() -> None:
    engine = _engine(hang_rate=1.0)
    task = asyncio.create_task(_run(engine, _req(rid="h")))
    await asyncio.sleep(0.2)
    assert not task.done()
    await engine.abort("h")
    chunks = await asyncio.wait_for(task, 2)
    assert chunks[-1].finish_reason == "abort"


async def test_paced_engine_streams_over_time() -> None:
    engine = SimulatedEngine(("m",), ttft_ms=20, tokens_per_s=500)
    loop = asyncio.get_running_loop()
    start = loop.time()
    stamps = [loop.time() - start async for _ in engine.generate(_req())]
    assert stamps[0] >= 0.02
    assert stamps[-1] > stamps[0]  # tokens arrive over time, not in one burst


@pytest.mark.parametrize(
    ("pieces", "stops", "out", "stopped"),
    [
        (["ab", "cd", "ef"], ("cde",), "ab", True),
        (["hello", " wor", "ld"], ("xyz",), "hello world", False),
        (["a", "b", "c"], ("c", "bc"), "a", True),
        (["stop"], ("stop",), "", True),
    ],
)
def test_stop_matcher(pieces: list[str], stops: tuple[str, ...], out: str, stopped: bool) -> None:
    m = StopMatcher(stops)
    text = "".join(m.feed(p) for p in pieces) + m.flush()
    assert (text, m.stopped) == (out, stopped)


def test_coalescer_leaves_the_first_piece_to_the_next_loop_turn_then_batches() -> None:
    c = Coalescer(flush_ms=10, flush_chars=8)
    assert c.add("a", 1, now=0.0) is None and c.first_waiting
    assert c.add("b", 1, now=0.0) is None  # produced in the same breath: it joins the first
    first = c.cut(now=0.0005)  # the worker cuts it on the event loop's next turn
    assert first is not None and not c.first_waiting
    assert (first.index, first.offset, first.text, first.tokens) == (0, 0, "ab", 2)
    assert c.add("c", 1, now=0.002) is None
    by_time = c.add("d", 1, now=0.011)
    assert by_time is not None
    assert (by_time.offset, by_time.text, by_time.tokens) == (2, "cd", 2)
    by_size = c.add("123456789", 1, now=0.012)
    assert by_size is not None
    assert by_size.offset == 4
    last = c.finish("", 0, now=0.013)
    assert (last.index, last.offset, last.text, last.tokens) == (3, 13, "", 0)


def test_a_whole_answer_before_the_first_cut_is_one_piece() -> None:
    c = Coalescer(flush_ms=10, flush_chars=64)
    for t in ("x", "y", "z"):
        assert c.add(t, 1, now=0.0) is None
    last = c.finish("!", 1, now=0.0)
    assert (last.index, last.offset, last.text, last.tokens) == (0, 0, "xyz!", 4)
    assert c.cut(now=0.001) is None  # the first-piece turn comes too late: nothing left


def test_a_piece_carries_the_ids_of_exactly_its_tokens() -> None:
    c = Coalescer(flush_ms=10, flush_chars=64)
    assert c.add("", 1, now=0.0, token_ids=(7,)) is None  # ids ahead of their text wait too
    assert c.add("ab", 1, now=0.0, token_ids=(8,)) is None
    first = c.cut(now=0.001)
    assert first is not None and (first.text, first.tokens, first.token_ids) == ("ab", 2, (7, 8))
    last = c.finish("c", 1, now=0.002, token_ids=(9,))
    assert (last.text, last.token_ids) == ("c", (9,))


def test_a_piece_with_any_part_lacking_ids_has_none() -> None:
    c = Coalescer(flush_ms=10, flush_chars=64)
    c.add("a", 1, now=0.0, token_ids=(1,))
    c.add("b", 1, now=0.0)  # an engine that does not know its ids
    last = c.finish("c", 1, now=0.0, token_ids=(3,))
    assert (last.text, last.tokens, last.token_ids) == ("abc", 3, None)
    again = Coalescer(flush_ms=10, flush_chars=64)
    assert again.finish("", 0, now=0.0).token_ids is None  # no tokens: nothing to say


def test_text_assembler_drops_repeats_and_waits_for_gaps() -> None:
    t = TextAssembler()
    assert t.add(0, "Hello") == "Hello"
    assert t.add(0, "Hello") == ""  # a redelivered attempt starts over
    assert t.add(9, "ld") == ""  # arrived early
    assert t.add(3, "lo wor") == " wor" + "ld"
    assert t.text == "Hello world"


async def test_a_resumed_generation_yields_only_the_rest_and_counts_only_it() -> None:
    engine = _engine()
    whole = await _run(engine, _req(max_tokens=1000))
    text = "".join(c.text for c in whole)
    total = whole[-1].usage.completion_tokens  # type: ignore[union-attr]
    pieces = [c.text for c in whole if c.text]
    head = "".join(pieces[:5])  # what a dead worker streamed: five tokens
    rest = await _run(
        engine,
        GenerationRequest("r2", "m", Prompt(text="hello world"), SamplingParams(), resume=head),
    )
    assert head + "".join(c.text for c in rest) == text
    assert rest[-1].usage.completion_tokens == total - 5  # type: ignore[union-attr]


async def test_a_coalescer_resuming_an_answer_numbers_from_its_offset() -> None:
    c = Coalescer(flush_ms=0, flush_chars=1, offset=12)
    piece = c.add("abc", 1, 0.0)
    assert piece is not None and (piece.offset, piece.index) == (12, 0)
