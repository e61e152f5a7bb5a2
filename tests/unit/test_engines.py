"""Pure parts of the OpenAI-upstream and vLLM engines: SSE parsing, request/parameter mapping,
error classes, cumulative-to-delta text."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.errors import EngineError
from events.inference import ChatMessage, Prompt, ResponseFormat, SamplingParams, Usage
from events.tools import Function, Tool, ToolCall, ToolChoice
from services.engines import vllm_requests as asks
from services.engines.openai_upstream import classify, delta_of, request_body
from services.engines.protocol import GenerationRequest, estimate_tokens
from services.engines.sse_parse import SSEParser
from services.engines.vllm_engine import engine_args, finish_reason, resume_point, sampling_kwargs
from services.settings import Settings

STREAM = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"delta":{"content":"h\xc3\xa9"}}]}\r\n\r\n'
    b"event: message\ndata: line one\ndata: line two\n\n"
    b": ping\r\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":3}}\r\r'
    b"data: [DONE]\n\n"
)
EVENTS = [
    '{"choices":[{"delta":{"content":"hé"}}]}',
    "line one\nline two",
    '{"choices":[],"usage":{"prompt_tokens":3}}',
    "[DONE]",
]


def test_sse_parser_reads_comments_crlf_cr_and_multiline_data() -> None:
    assert SSEParser().feed(STREAM) == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_sse_parser_gives_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    parser = SSEParser()
    events: list[str] = []
    points = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(points):
        events += parser.feed(STREAM[a:b])
    assert events == EVENTS


def test_sse_parser_strips_a_byte_order_mark_at_the_streams_start_only() -> None:
    stream = "\ufeffdata: a\n\ndata: \ufeffb\n\n".encode()
    assert SSEParser().feed(stream) == ["a", "\ufeffb"]
    parser = SSEParser()  # the mark split over reads
    assert [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])] == [
        "a",
        "\ufeffb",
    ]


def test_an_unterminated_event_is_not_delivered() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.close() == []


def _request(prompt: Prompt, **params: object) -> GenerationRequest:
    return GenerationRequest("r1", "small", prompt, SamplingParams(**params))  # type: ignore[arg-type]


def test_chat_and_text_requests_map_to_the_two_endpoints() -> None:
    chat = Prompt(messages=(ChatMessage(role="user", content="hi"),))
    path, body = request_body(_request(chat, max_tokens=7, stop=("x",), seed=4), "upstream-name")
    assert path == "/chat/completions"
    assert body["model"] == "upstream-name" and body["messages"] == [
        {"role": "user", "content": "hi"}
    ]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["stop"], body["seed"], body["n"]) == (7, ["x"], 4, 1)
    path, body = request_body(_request(Prompt(text="once")), "m")
    assert path == "/completions" and body["prompt"] == "once"
    assert "stop" not in body and "seed" not in body


def test_upstream_errors_are_retriable_or_final_by_status() -> None:
    for status in (408, 429, 500, 502, 503):
        assert classify(status, "busy").retriable, status
    for status in (400, 401, 403, 404, 422):
        err = classify(status, "bad")
        assert not err.retriable and err.kind == "invalid_request", status


def test_deltas_of_chat_and_text_chunks() -> None:
    assert delta_of(json.loads('{"choices":[{"delta":{"content":"a"}}]}')) == ("a", None)
    assert delta_of({"choices": [{"delta": {}, "finish_reason": "length"}]}) == ("", "length")
    assert delta_of({"choices": [{"text": "b", "finish_reason": None}]}) == ("b", None)
    assert delta_of({"choices": []}) == ("", None)
    assert estimate_tokens("") == 0 and estimate_tokens("abcdefgh") == 2


def test_estimated_usage_stays_marked_when_added() -> None:
    total = Usage(prompt_tokens=1) + Usage(completion_tokens=2, estimated=True)
    assert total.estimated and total.total_tokens == 3
    assert not (Usage(prompt_tokens=1) + Usage(prompt_tokens=2)).estimated


def test_vllm_engine_args_come_from_settings() -> None:
    s = Settings(
        capacity=48,
        vllm_tensor_parallel_size=2,
        vllm_max_model_len=8192,
        vllm_quantization="awq",
        vllm_dtype="bfloat16",
        model_cache_dir="/models",  # type: ignore[arg-type]
    )
    args = engine_args(s, "org/model")
    assert args["model"] == "org/model" and args["max_num_seqs"] == 48
    assert args["tensor_parallel_size"] == 2 and args["pipeline_parallel_size"] == 1
    assert args["max_model_len"] == 8192 and args["quantization"] == "awq"
    assert args["dtype"] == "bfloat16" and args["download_dir"] == "/models"
    assert args["enable_prefix_caching"] is True
    plain = engine_args(Settings(), "m")
    assert "max_model_len" not in plain and "quantization" not in plain
    assert "download_dir" not in plain
    extra = Settings(vllm_engine_args={"enforce_eager": True, "dtype": "float32"})
    assert engine_args(extra, "m")["enforce_eager"] is True
    assert engine_args(extra, "m")["dtype"] == "float32"  # vLLM's own arguments win


def test_vllm_sampling_params_carry_the_request() -> None:
    kwargs = sampling_kwargs(
        SamplingParams(max_tokens=9, temperature=0.2, top_p=0.5, stop=("\n",), seed=1, n=3)
    )
    assert kwargs == {
        "n": 1,  # one task per choice
        "max_tokens": 9,
        "temperature": 0.2,
        "top_p": 0.5,
        "stop": ["\n"],
        "seed": 1,
    }
    assert "seed" not in sampling_kwargs(SamplingParams())


def test_vllm_finish_reasons() -> None:
    assert finish_reason("stop", False) == "stop"
    assert finish_reason("length", False) == "length"
    assert finish_reason("abort", False) == "abort"
    assert finish_reason("stop", True) == "abort"
    assert finish_reason(None, False) == "stop"


def test_resumed_ids_continue_where_their_text_ends() -> None:
    assert resume_point("<s>user: hi", "<s>user: hi Once upon", " Once upon") == (True, "")


def test_resumed_ids_ahead_of_the_streamed_text_owe_readers_the_rest() -> None:
    # the detokenizer held back text that may start a stop string: it is sent first
    assert resume_point("P", "P Once upon a", " Once upon") == (True, " a")
    # ... but an incomplete character waits for the token that completes it
    assert resume_point("P", "P caf\ufffd", " caf") == (True, "")


def test_resumed_ids_that_do_not_match_the_text_are_not_used() -> None:
    assert resume_point("P", "P Twice", " Once") == (False, "")
    assert resume_point("P", "Q Once", " Once") == (False, "")


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_owed_text_completes_the_streamed_text(prompt: str, resume: str, ahead: str) -> None:
    ahead = ahead.rstrip("\ufffd")
    assert resume_point(prompt, prompt + resume + ahead, resume) == (True, ahead)


def test_a_resumed_request_asks_the_upstream_to_continue_the_answer() -> None:
    chat = Prompt(messages=(ChatMessage(role="user", content="hi"),))
    _, body = request_body(
        GenerationRequest("r", "m", chat, SamplingParams(), resume="Once upon"), "m"
    )
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    _, text = request_body(
        GenerationRequest("r", "m", Prompt(text="Tell: "), SamplingParams(), resume="Once"), "m"
    )
    assert text["prompt"] == "Tell: Once"


def _sse_reference(stream: bytes) -> list[str]:
    """The events of a whole stream, read line by line at once (no splits to handle)."""
    text = stream.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    events, data = [], []
    for line in text.split("\n")[:-1]:
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    return events


_SSE_LINE = st.one_of(
    st.builds(
        lambda v: f"data: {v}",
        st.text(alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",))),
    ),
    st.builds(lambda v: f"data:{v}", st.text(alphabet="a é{}")),
    st.sampled_from(["", "", "", "data", ": keep-alive", "event: x", "id: 3", "retry: 10", "da"]),
)


@given(
    st.lists(st.tuples(_SSE_LINE, st.sampled_from(["\n", "\r\n", "\r"])), max_size=30),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_sse_parser_reads_any_stream_split_anywhere_as_a_whole_read_would(
    lines: list[tuple[str, str]], cuts: list[int]
) -> None:
    stream = "".join(line + end for line, end in lines).encode()
    parser = SSEParser()
    events: list[str] = []
    points = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    for a, b in itertools.pairwise(points):
        events += parser.feed(stream[a:b])
    assert events == _sse_reference(stream)
    with pytest.raises(EngineError, match="vocabulary") as refused:
        finish_reason("error", False)  # vLLM ends a request it cannot constrain so
    assert refused.value.kind == "invalid_request" and not refused.value.retriable


def test_vllm_sampling_carries_penalties_bias_and_logprobs() -> None:
    kwargs = sampling_kwargs(
        SamplingParams(
            presence_penalty=0.5,
            frequency_penalty=-1,
            logit_bias={7: 100},
            logprobs=True,
            top_logprobs=0,
        )
    )
    assert kwargs["presence_penalty"] == 0.5 and kwargs["frequency_penalty"] == -1
    assert kwargs["logit_bias"] == {7: 100.0} and kwargs["logprobs"] == 0


def test_a_forced_call_is_constrained_as_vllms_server_does_and_parsed_back() -> None:
    params = {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {}}}
    tools = (
        Tool(function=Function(name="f", parameters=params)),
        Tool(function=Function(name="g")),
    )
    prompt = Prompt(messages=(ChatMessage(role="user", content="go"),), tools=tools)
    required = SamplingParams(tool_choice=ToolChoice(mode="required", parallel=False))
    schema = asks.structured_kwargs(prompt, required)
    assert schema is not None
    array = schema["json"]
    assert array["type"] == "array" and array["minItems"] == 1 and array["maxItems"] == 1
    assert array["$defs"] == {"X": {}}
    names = [b["properties"]["name"]["enum"] for b in array["items"]["anyOf"]]
    assert names == [["f"], ["g"]]
    calls = asks.forced_calls(
        ToolChoice(mode="required"), '[{"name": "f", "parameters": {"x": 1}}, {"name": "g"}]'
    )
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1}), ("g", {})]
    assert asks.forced_calls(ToolChoice(mode="required"), '[{"name": "f", "para') == ()
    named = SamplingParams(tool_choice=ToolChoice(mode="function", name="g"))
    assert asks.structured_kwargs(prompt, named) == {
        "json": {"type": "object", "properties": {}, "additionalProperties": False}
    }
    (call,) = asks.forced_calls(ToolChoice(mode="function", name="g"), "{}")
    assert call.name == "g" and call.arguments == "{}" and call.id.startswith("call_")
    fmt = SamplingParams(response_format=ResponseFormat(type="json_object"))
    assert asks.structured_kwargs(prompt, fmt) == {"json_object": True}
    assert asks.structured_kwargs(prompt, SamplingParams()) is None


def test_vllm_logprobs_and_template_inputs() -> None:
    @dataclass
    class Lp:
        logprob: float
        rank: int
        decoded_token: str

    positions = [
        {5: Lp(-0.1, 1, "a"), 6: Lp(-2.0, 2, "b")},
        {6: Lp(-3.0, 30, "b"), 5: Lp(-0.2, 1, "a")},
    ]
    lps = asks.logprobs_of((5, 6), positions, 1)
    assert lps is not None
    assert [(t.token, t.logprob, [x.token for x in t.top_logprobs]) for t in lps] == [
        ("a", -0.1, ["a"]),
        ("b", -3.0, ["a"]),  # the sampled token, outside the top
    ]
    assert asks.logprobs_of((5,), None, 2) is None
    call = ToolCall(id="c", name="f", arguments='{"x": 1}')
    prompt = Prompt(
        messages=(
            ChatMessage(role="assistant", content="", tool_calls=(call,)),
            ChatMessage(role="tool", content="2", tool_call_id="c"),
        ),
        tools=(Tool(function=Function(name="f")),),
    )
    messages, tools = asks.template_inputs(prompt)
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}  # a mapping
    assert messages[1] == {"role": "tool", "content": "2", "tool_call_id": "c"}
    assert tools == [{"type": "function", "function": {"name": "f", "strict": False}}]
