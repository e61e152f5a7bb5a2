"""What a request needs of a node, which nodes may take it, and what the simulated engine answers
to each field: tool calls valid for their schema, JSON for a schema, logprobs of its sampler."""

from __future__ import annotations

import json
import math

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from events.capabilities import needed, needs
from events.errors import EngineError
from events.inference import ChatMessage, ImageRef, Prompt, ResponseFormat, SamplingParams
from events.jobs import Choice
from events.records import NodeRecord
from events.text import TextAssembler
from events.tools import Function, Tool, ToolCall, ToolChoice
from gateway.completions import _diverged
from gateway.protocol import ChatCompletionRequest
from services.engines.sim_answers import VOCAB, answer, pieces
from services.engines.simulated import simulated_tokens
from services.registry.select import SHARED, Need
from tests.unit.test_selection import node, pool

WEATHER = Tool(
    function=Function(
        name="get_weather",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 3},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    )
)
CLOCK = Tool(function=Function(name="getTime"))  # no parameters: an empty object


def chat(*turns: ChatMessage, tools: tuple[Tool, ...] = ()) -> Prompt:
    return Prompt(messages=turns, tools=tools)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def test_each_field_that_asks_for_more_than_text_names_its_capability() -> None:
    prompt = chat(
        user("hi"),
        ChatMessage(
            role="assistant", content="", tool_calls=(ToolCall(id="1", name="x", arguments="{}"),)
        ),
        ChatMessage(role="tool", content="r", tool_call_id="1"),
        ChatMessage(role="user", content="see", images=(ImageRef(url="https://x/y.png"),)),
        tools=(WEATHER,),
    )
    params = SamplingParams(
        response_format=ResponseFormat(type="json_object"),
        logprobs=True,
        presence_penalty=1,
        logit_bias={1: 2},
        tool_choice=ToolChoice(mode="required"),
    )
    assert list(needs(prompt, params)) == [
        ("messages", "chat"),  # what kind of request it is comes first
        ("tools", "tools"),
        ("tool_choice", "tools"),
        ("messages.1.tool_calls", "tools"),
        ("messages.2.tool_call_id", "tools"),
        ("messages.3.content", "images"),
        ("response_format", "structured_outputs"),
        ("logprobs", "logprobs"),
        ("presence_penalty", "penalties"),
        ("logit_bias", "logit_bias"),
    ]
    assert needed(Prompt(text="x"), SamplingParams(response_format=ResponseFormat())) == {
        "completions"
    }
    embed = SamplingParams(max_tokens=1, embed=True)
    assert needed(Prompt(texts=("a",)), embed) == {"embeddings"}  # a pooling node can


def test_a_task_goes_only_to_nodes_that_can_and_shared_only_when_all_can() -> None:
    plain = node("a")  # an older record: plain chat and completions
    able = node("b", capabilities={"m": ("chat", "completions", "tools", "logprobs")})
    p = pool(plain, able)
    assert p.pick(Need(model="m", can=frozenset({"chat"}))) == SHARED
    embedder = pool(able, node("e", capabilities={"m": ("embeddings",)}))
    assert embedder.pick(Need(model="m", can=frozenset({"chat"}))) == "b"  # not the embedder
    assert p.pick(Need(model="m", can=frozenset({"tools"}))) == "b"
    assert p.pick(Need(model="m", can=frozenset({"tools", "images"}))) is None
    both = pool(able, node("c", capabilities={"m": ("chat", "tools")}))
    assert both.pick(Need(model="m", can=frozenset({"tools"}))) == SHARED
    assert both.pick(Need(model="m", can=frozenset({"logprobs"}))) == "b"
    # a node that learns a capability changes the candidates (the cache is rebuilt)
    p.update(node("a", capabilities={"m": ("chat", "images", "tools")}))
    assert p.pick(Need(model="m", can=frozenset({"tools", "images"}))) == "a"
    assert NodeRecord.model_validate_json(plain.model_dump_json()).can("m") == {
        "chat",
        "completions",
    }
    assert "capabilities" not in plain.model_dump_json()  # an older record's bytes, unchanged


RECORDED = (  # what the sampler answered before tools, schemas, biases and logprobs existed
    "An a from gateway model tasks. Quotas keep events clients log read read clients that. Across "
    "usage report and request events keep and models while routes. Batch every history explains "
    "through and. Its fresh serves events the lands while folds serves that. And happened models "
    "from subjects routes the subjects. And traces about what serves."
)


def test_plain_answers_are_what_they_always_were() -> None:
    assert "".join(simulated_tokens("sim-small", "hello", 0)) == RECORDED
    with_logprobs = answer("sim-small", Prompt(text="hello"), SamplingParams(logprobs=True), 0)
    assert "".join(with_logprobs.tokens) == RECORDED
    assert "".join(pieces(' {"a": [1, 2.5], "b": "x y"} ')) == ' {"a": [1, 2.5], "b": "x y"} '


def test_auto_calls_the_tool_asked_about_and_answers_its_result() -> None:
    asked = chat(user("What's the weather in Paris?"), tools=(CLOCK, WEATHER))
    call = answer("m", asked, SamplingParams(), 0).tool_call
    assert call is not None and call.name == "get_weather"
    assert jsonschema_rs.validator_for(WEATHER.function.parameters).is_valid(
        json.loads(call.arguments)
    )
    assert (
        answer(
            "m", chat(user("what time is it"), tools=(CLOCK, WEATHER)), SamplingParams(), 0
        ).tool_call.name
        == "getTime"
    )  # type: ignore[union-attr]
    assert answer("m", chat(user("hello"), tools=(WEATHER,)), SamplingParams(), 0).tool_call is None
    result = chat(
        user("weather?"),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content="sunny", tool_call_id=call.id),
        tools=(WEATHER,),
    )
    assert answer("m", result, SamplingParams(), 0).tool_call is None
    none = SamplingParams(tool_choice=ToolChoice(mode="none"))
    assert answer("m", asked, none, 0).tool_call is None
    forced = SamplingParams(tool_choice=ToolChoice(mode="required"))
    assert answer("m", result, forced, 0).tool_call is not None  # required: always a call
    named = SamplingParams(tool_choice=ToolChoice(mode="function", name="getTime"))
    clock = answer("m", asked, named, 0).tool_call
    assert clock is not None and clock.name == "getTime" and json.loads(clock.arguments) == {}
    with pytest.raises(EngineError, match="no tool is named"):
        answer("m", asked, SamplingParams(tool_choice=ToolChoice(mode="function", name="nope")), 0)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bias=st.dictionaries(st.integers(0, len(VOCAB) - 1), st.floats(-100, 100), max_size=5),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    top=st.integers(0, 20),
)
def test_logprobs_are_a_distribution_and_the_sampled_token_is_in_it(
    seed: int, bias: dict[int, float], presence: float, frequency: float, top: int
) -> None:
    params = SamplingParams(
        logit_bias=bias,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logprobs=True,
        top_logprobs=top,
    )
    got = answer("m", Prompt(text=f"p{seed}"), params, seed)
    assert got.logprobs is not None and len(got.logprobs) == len(got.tokens)
    for token, lp in zip(got.tokens, got.logprobs, strict=True):
        assert lp.token == token and lp.logprob <= 0
        assert len(lp.top_logprobs) == (min(top, len(VOCAB)) if token != "." else min(top, 1))
        assert sum(math.exp(t.logprob) for t in lp.top_logprobs) <= 1 + 1e-6
        if lp.top_logprobs and len(lp.top_logprobs) == min(top, len(VOCAB)):
            assert lp.logprob <= lp.top_logprobs[0].logprob + 1e-9


def test_a_strong_bias_decides_and_a_ban_holds() -> None:
    mesh = VOCAB.index("mesh")
    favoured = answer("m", Prompt(text="x"), SamplingParams(logit_bias={mesh: 100}), 1).tokens
    words = [t.strip(" .").lower() for t in favoured if t.strip(" .")]
    assert words.count("mesh") == len(words)
    banned = answer("m", Prompt(text="x"), SamplingParams(logit_bias={mesh: -100}), 1).tokens
    assert all(t.strip(" .").lower() != "mesh" for t in banned)
    with pytest.raises(EngineError, match="not in the simulated vocabulary"):
        answer("m", Prompt(text="x"), SamplingParams(logit_bias={len(VOCAB): 1}), 1)


def test_json_answers_are_valid_and_deterministic() -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1}},
        "required": ["tags"],
    }
    fmt = SamplingParams(response_format=ResponseFormat(type="json_schema", json_schema=schema))
    one = "".join(answer("m", Prompt(text="q"), fmt, 3).tokens)
    assert one == "".join(answer("m", Prompt(text="q"), fmt, 3).tokens)
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(one))
    obj = SamplingParams(response_format=ResponseFormat(type="json_object"))
    assert isinstance(json.loads("".join(answer("m", Prompt(text="q"), obj, 3).tokens)), dict)
    with pytest.raises(EngineError, match="response_format.json_schema"):
        answer(
            "m",
            Prompt(text="q"),
            SamplingParams(
                response_format=ResponseFormat(type="json_schema", json_schema={"not": {}})
            ),
            3,
        )


def test_a_stream_that_is_not_a_beginning_of_the_answer_is_said_to_have_diverged() -> None:
    streamed = TextAssembler()
    streamed.add(0, '{"a": 1')
    answer = Choice(index=0, output='{"b": 2}', finish_reason="stop")
    error = _diverged((answer,), {0: streamed}, {})
    assert error is not None and error.code == "stream_diverged" and error.status == 502
    same = Choice(index=0, output='{"a": 12}', finish_reason="stop")
    assert _diverged((same,), {0: streamed}, {}) is None
    args = TextAssembler()
    args.add(0, '{"q"')
    call = ToolCall(id="c", name="f", arguments='{"x": 1}')
    called = Choice(index=0, output="", finish_reason="tool_calls", tool_calls=(call,))
    assert _diverged((called,), {0: TextAssembler()}, {(0, 0): args}) is not None


def test_logit_bias_keys_are_plain_token_ids() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for bad in ("\u00b2", "-1", "1e3", str(2**31)):
        with pytest.raises(ValidationError, match="token ids"):
            ChatCompletionRequest.model_validate({**body, "logit_bias": {bad: 1}})
    ok = ChatCompletionRequest.model_validate({**body, "logit_bias": {"42": -100}})
    assert ok.sampling(16).logit_bias == {42: -100.0}
