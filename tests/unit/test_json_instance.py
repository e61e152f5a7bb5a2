"""Schema-valid JSON for the simulated engine: validity, determinism, pydantic, refusals."""

from __future__ import annotations

import json
import random
from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated, Any, Literal, Optional
from uuid import UUID

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, StringConstraints

from services.engines.json_instance import UnsupportedSchema, check, instance, json_object


def assert_valid(schema: dict[str, Any], seeds: range = range(20)) -> list[Any]:
    """instance() of every seed is valid against schema (formats included) and deterministic."""
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    values = []
    for seed in seeds:
        value = instance(schema, random.Random(seed))
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (json.dumps(value), errors)
        assert json.loads(json.dumps(value)) == value
        assert instance(schema, random.Random(seed)) == value
        values.append(value)
    return values


# --- scalars, bounds, formats, patterns


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string", "minLength": 30},
        {"type": "string", "maxLength": 3},
        {"type": "string", "minLength": 0, "maxLength": 0},
        {"type": "string", "minLength": 7, "maxLength": 7},
        {"type": "integer", "minimum": -5, "maximum": -3},
        {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12},
        {"type": "integer", "minimum": 1_000_000},
        {"type": "integer", "maximum": -1_000_000, "multipleOf": 7},
        {"type": "integer", "minimum": 1, "maximum": 20, "multipleOf": 2.5},
        {"type": "number", "minimum": 0.001, "maximum": 0.002},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
        {"type": "number", "minimum": 0.3, "maximum": 1.2, "multipleOf": 0.3},
        {"type": "number", "exclusiveMinimum": 0.1, "maximum": 0.2, "multipleOf": 0.01},
        {"type": "number", "minimum": 5, "exclusiveMinimum": 5},
        {"type": ["string", "null"], "maxLength": 4},
        {"type": ["integer", "number"], "minimum": 2, "maximum": 2},
        {"minimum": 5},
        {"format": "email"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "time"},
        {"type": "string", "format": "email", "maxLength": 40},
        {"type": "string", "format": "uuid"},
        {"type": "string", "format": "uri"},
        {"type": "string", "pattern": "^[a-z]+$"},
        {"type": "string", "pattern": "^[A-Z0-9_-]{3,5}$", "minLength": 4},
        {"type": "string", "pattern": r"^\d{4}$"},
        {"type": "string", "pattern": r"[a-f\d]{2}"},
        {"type": "string", "pattern": r"^[\w.\-]+$", "maxLength": 6},
        {"type": "string", "pattern": "^.{2,}$"},
        {"enum": ["a", 1, None, [1, 2], {"k": "v"}]},
        {"const": {"nested": [1, "x"]}},
        {"type": "string", "enum": ["a", 1, "b"]},
        {"type": "integer", "enum": [1.0, "x"]},
        {"type": "integer", "format": "int32", "nullable": True},  # formats only bind strings
        {"const": "a", "enum": ["a", "b"]},
    ],
)
def test_scalars_are_valid(schema: dict[str, Any]) -> None:
    assert_valid(schema)


def test_strings_are_words_and_respect_lengths() -> None:
    words = ["lorem", "ipsum", "dolor"]
    for seed in range(30):
        text = instance(
            {"type": "string", "minLength": 12, "maxLength": 14}, random.Random(seed), words=words
        )
        assert 12 <= len(text) <= 14
        assert set(text) <= set("lorem ipsum dolor x")
        assert not text.endswith(" ")
    assert instance({"type": "string"}, random.Random(0), words=["only"]).split(" ")[0] == "only"


def test_same_seed_same_value_different_seeds_vary() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}}
    values = [json.dumps(instance(schema, random.Random(seed))) for seed in range(20)]
    assert values == [json.dumps(instance(schema, random.Random(seed))) for seed in range(20)]
    assert len(set(values)) > 10


def test_schema_is_not_mutated() -> None:
    schema = {"type": "object", "properties": {"x": {"const": [1]}}, "required": ["x"]}
    before = json.dumps(schema)
    value = instance(schema, random.Random(0))
    value["x"].append(2)
    assert json.dumps(schema) == before


def test_json_object_is_small_and_deterministic() -> None:
    value = json_object(random.Random(3), ["alpha", "beta"])
    assert value == json_object(random.Random(3), ["alpha", "beta"])
    assert list(value) == ["answer"]
    assert set(value["answer"].split()) <= {"alpha", "beta"}
    assert json_object(random.Random(3), [])["answer"]


# --- objects and arrays


def test_objects_required_optional_and_closed() -> None:
    schema = {
        "type": "object",
        "properties": {name: {"type": "integer"} for name in "abcdef"},
        "required": ["a", "z"],
        "additionalProperties": {"type": "boolean"},
    }
    values = assert_valid(schema)
    assert all({"a", "z"} <= set(v) and isinstance(v["z"], bool) for v in values)
    assert len({frozenset(v) for v in values}) > 3  # optional properties vary with the seed
    closed = {**schema, "required": ["a"], "additionalProperties": False, "minProperties": 4}
    assert all(set(v) <= set("abcdef") and len(v) >= 4 for v in assert_valid(closed))
    assert all(
        len(v) <= 2 for v in assert_valid({**closed, "minProperties": 0, "maxProperties": 2})
    )


def test_dict_like_objects_get_entries() -> None:
    values = assert_valid({"type": "object", "additionalProperties": {"type": "integer"}})
    assert any(values)
    assert_valid({"type": "object", "minProperties": 3, "maxProperties": 3})


def test_arrays() -> None:
    assert all(
        1 <= len(v) <= 3 for v in assert_valid({"type": "array", "items": {"type": "integer"}})
    )
    assert all(len(v) == 5 for v in assert_valid({"type": "array", "minItems": 5, "maxItems": 5}))
    assert assert_valid({"type": "array", "maxItems": 0}) == [[]] * 20
    tuple_schema = {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "items": False,
    }
    assert all(len(v) == 2 for v in assert_valid(tuple_schema))
    assert_valid({"type": "array", "prefixItems": [{"type": "null"}], "minItems": 3})
    draft7 = "http://json-schema.org/draft-07/schema#"
    assert_valid({"$schema": draft7, "items": [{"type": "integer"}], "additionalItems": False})
    assert_valid({"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": True, "maxItems": 5})
    assert_valid(
        {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 1}
    )


# --- combinators and references


def test_any_of_one_of_all_of() -> None:
    assert_valid({"anyOf": [{"type": "string", "format": "ipv6"}, {"type": "integer"}]})
    assert_valid({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]})
    assert_valid(
        {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["kind"],
            "oneOf": [
                {"properties": {"kind": {"const": "a"}}, "required": ["n"]},
                {"properties": {"kind": {"const": "b"}}},
            ],
        }
    )
    merged = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}},
            {"properties": {"a": {"maximum": 4}, "b": {"type": "string"}}, "required": ["a", "b"]},
        ]
    }
    assert all(v["a"] in (3, 4) for v in assert_valid(merged))
    assert_valid({"allOf": [{"type": "number"}, {"type": ["integer", "string"]}, {"minimum": 9}]})


def test_refs_and_recursion() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "required": ["name", "children", "next"],
            }
        },
        "$ref": "#/$defs/node",
    }
    values = assert_valid(tree, range(40))
    assert any(v["children"] for v in values)
    assert_valid({"definitions": {"x": {"type": "integer"}}, "items": {"$ref": "#/definitions/x"}})
    assert_valid({"properties": {"a/b": {"type": "integer"}, "c": {"$ref": "#/properties/a~1b"}}})
    # a list that must hold a list that must hold ... terminates only through the empty list
    nested = {
        "$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}}},
        "$ref": "#/$defs/l",
    }
    assert_valid(nested)


# --- pydantic round trips


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=20)
    zip: str | None = None


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Person(BaseModel):
    name: str = Field(description="full name", max_length=12)
    age: int = Field(ge=0, le=150)
    email: Optional[str]  # noqa: UP045  (the typing spelling pydantic users still write)
    tags: list[str]
    address: Address
    previous: list[Address] = []
    color: Color
    mood: Literal["happy", "sad"] = "happy"
    born: datetime
    day: date
    wakes: time
    id: UUID
    score: float = Field(gt=0, lt=1)
    code: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    pair: tuple[int, str]
    seen: set[int]
    counts: dict[str, int]
    pet: Cat | Dog = Field(discriminator="kind")
    pets: list[Cat | Dog] = []


class Node(BaseModel):
    value: int
    children: list[Node] = []
    parent: Node | None = None


class Forest(BaseModel):
    trees: list[Node]
    biggest: Optional[Node] = None  # noqa: UP045


@pytest.mark.parametrize("model", [Address, Person, Node, Forest])
def test_pydantic_models_round_trip(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for value in assert_valid(schema, range(30)):
        model.model_validate_json(json.dumps(value))


def test_recursive_model_is_nested_and_bounded() -> None:
    schema = Node.model_json_schema()
    depths = []
    for seed in range(50):
        value, depth = instance(schema, random.Random(seed)), 0
        while value.get("children"):
            value, depth = value["children"][0], depth + 1
        depths.append(depth)
    assert 0 < max(depths) <= 5


def test_openai_strict_mode_tool_parameters() -> None:
    weather = {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City and country"},
            "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "hours": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"at": {"type": "string"}, "wind": {"type": "boolean"}},
                    "required": ["at", "wind"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["location", "unit", "days", "hours"],
        "additionalProperties": False,
    }
    for value in assert_valid(weather):
        assert set(value) == {"location", "unit", "days", "hours"}
        assert all(set(hour) == {"at", "wind"} for hour in value["hours"])


# --- refusals


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "string", "pattern": "^(ab|cd)+$"}, "/pattern"),
        (
            {"properties": {"code": {"type": "string", "pattern": "[^a]"}}},
            "/properties/code/pattern",
        ),
        ({"properties": {"when": {"type": "string", "format": "ipv6"}}}, "/properties/when/format"),
        ({"type": "string", "format": "date", "maxLength": 5}, "/format"),
        ({"type": "string", "pattern": "^[a-z]{5}$", "maxLength": 3}, "/pattern"),
        ({"not": {"type": "string"}}, "/not"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "/patternProperties"),
        ({"if": {}, "then": {}}, "/if"),
        ({"type": "object", "unevaluatedProperties": {"type": "string"}}, "/unevaluatedProperties"),
        ({"type": "array", "contains": {"type": "integer"}}, "/contains"),
        ({"type": "strin"}, "/type"),
        ({"type": []}, "/type"),
        ({"type": "string", "minLength": 5, "maxLength": 4}, "/minLength"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "/minimum"),
        ({"type": "integer", "exclusiveMinimum": 4, "maximum": 4}, "/exclusiveMinimum"),
        ({"type": "integer", "minimum": 4.2, "maximum": 4.8}, "/minimum"),
        ({"type": "integer", "minimum": 1, "maximum": 4, "multipleOf": 5}, "/multipleOf"),
        ({"type": "number", "multipleOf": 0}, "/multipleOf"),
        ({"type": "number", "minimum": True}, "/minimum"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "/minItems"),
        ({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}, "/minItems"),
        ({"type": "array", "minItems": 2, "uniqueItems": True}, "/uniqueItems"),
        ({"properties": {"a": {}}, "required": ["b"], "additionalProperties": False}, "/required"),
        ({"type": "object", "minProperties": 2, "additionalProperties": False}, "/minProperties"),
        ({"type": "string", "enum": [1, 2]}, "/enum"),
        ({"const": "a", "enum": ["b"]}, "/enum"),
        ({"enum": ["a"], "maxLength": 3}, "/maxLength"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "/allOf/1/type"),
        (
            {"allOf": [{"additionalProperties": False}, {"required": ["a"]}]},
            "/allOf/1/additionalProperties",
        ),
        ({"$ref": "https://example.com/schema.json"}, "/$ref"),
        ({"$ref": "#/$defs/missing"}, "/$ref"),
        ({"anyOf": [{"not": {}}, {"type": "string", "format": "ipv4"}]}, "/anyOf/0/not"),
        ({"properties": {"a": False}, "required": ["a"]}, "/properties/a"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "/$defs/a"),
        (
            {
                "$defs": {
                    "a": {
                        "type": "object",
                        "properties": {"a": {"$ref": "#/$defs/a"}},
                        "required": ["a"],
                    }
                },
                "properties": {"x": {"$ref": "#/$defs/a"}},
            },
            "/$defs/a",
        ),
    ],
)
def test_check_refuses_with_the_path(schema: dict[str, Any], where: str) -> None:
    with pytest.raises(UnsupportedSchema) as raised:
        check(schema)
    assert str(raised.value).startswith(f"{where}:"), str(raised.value)
    with pytest.raises(UnsupportedSchema):
        instance(schema, random.Random(0))


@pytest.mark.parametrize("schema", [None, [], "string", True, 3])
def test_check_refuses_non_object_schemas(schema: Any) -> None:
    with pytest.raises(UnsupportedSchema):
        check(schema)


def test_recursion_without_an_end_is_refused_with_its_depth() -> None:
    schema = {
        "$defs": {
            "a": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}
        },
        "$ref": "#/$defs/a",
    }
    with pytest.raises(UnsupportedSchema, match="deeper than 32"):
        check(schema)


# --- property test: random schemas built to be satisfiable


def _bounded(kind: str, draw: st.DrawFn) -> dict[str, Any]:
    """An integer or number schema whose bounds always leave room for a value."""
    schema: dict[str, Any] = {"type": kind}
    step = draw(
        st.sampled_from([None, 1, 3, 7])
        if kind == "integer"
        else st.sampled_from([None, 0.5, 0.25, 0.1, 2])
    )
    lo = draw(st.one_of(st.none(), st.integers(-50, 50)))
    width = draw(st.integers(0, 40)) + 2 * (step or 1)
    hi = draw(st.one_of(st.none(), st.integers(-50, 50) if lo is None else st.just(lo + width)))
    if lo is not None:
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = (
            lo - 0.5 if kind == "number" else lo
        )
    if hi is not None:
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = hi
    if step is not None:
        schema["multipleOf"] = step
    return schema


@st.composite
def scalar_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A leaf schema: string (lengths, format or pattern), number, integer, enum, const, ..."""
    kind = draw(
        st.sampled_from(
            ["string", "integer", "number", "boolean", "null", "enum", "const", "any", "union"]
        )
    )
    if kind == "string":
        schema: dict[str, Any] = {"type": "string"}
        lo = draw(st.integers(0, 12))
        if draw(st.booleans()):
            schema["minLength"] = lo
        if draw(st.booleans()):
            schema["maxLength"] = lo + draw(st.integers(0, 10))
        extra = draw(
            st.sampled_from(
                [{}, {}, {"format": "date-time"}, {"format": "uuid"}, {"pattern": "^[a-z_]*$"}]
            )
        )
        if "format" in extra:
            schema = {"type": "string"}
        return {**schema, **extra}
    if kind in ("integer", "number"):
        return _bounded(kind, draw)
    if kind == "enum":
        values = draw(
            st.lists(
                st.one_of(st.text(max_size=5), st.integers(-(10**9), 10**9), st.none()),
                min_size=1,
                max_size=4,
                unique_by=json.dumps,
            )
        )
        return {"enum": values}
    if kind == "const":
        return {"const": draw(st.one_of(st.text(max_size=5), st.integers(-9, 9), st.booleans()))}
    if kind == "union":
        return {
            "type": draw(
                st.lists(
                    st.sampled_from(["string", "integer", "null", "boolean"]),
                    min_size=1,
                    max_size=3,
                    unique=True,
                )
            )
        }
    return {} if kind == "any" else {"type": kind}


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(["a", "b", "c", "d", "e"])

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        props = draw(st.dictionaries(names, children, max_size=4))
        required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
        schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        schema |= draw(
            st.sampled_from([{}, {"additionalProperties": False}, {"additionalProperties": True}])
        )
        if draw(st.booleans()):
            schema["maxProperties"] = len(required) + draw(st.integers(0, 2))
        if schema.get("additionalProperties") is not False and draw(st.booleans()):
            schema["minProperties"] = draw(st.integers(0, 5))
            schema["maxProperties"] = max(
                schema.get("maxProperties", len(required)), schema["minProperties"]
            )
        return schema

    @st.composite
    def arrays(draw: st.DrawFn) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": draw(children)}
        lo = draw(st.integers(0, 3))
        if draw(st.booleans()):
            schema["minItems"] = lo
        if draw(st.booleans()):
            schema["maxItems"] = lo + draw(st.integers(0, 3))
        if draw(st.booleans()):
            prefix = draw(st.lists(children, min_size=1, max_size=3))
            schema["prefixItems"] = prefix
            if draw(st.booleans()):
                schema["items"] = False
                schema["minItems"] = min(schema.get("minItems", 0), len(prefix))
        return schema

    @st.composite
    def one_of(draw: st.DrawFn) -> dict[str, Any]:
        kinds = draw(
            st.lists(
                st.sampled_from(["string", "integer", "null", "boolean", "array"]),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        return {"oneOf": [{"type": kind} for kind in kinds]}

    described = children.map(lambda s: {**s, "title": "T", "description": "d"})
    any_of = st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches})
    optional = children.map(lambda s: {"anyOf": [s, {"type": "null"}]})
    all_of = children.map(lambda s: {"allOf": [s, {"title": "part"}], "description": "d"})
    return st.one_of(objects(), arrays(), any_of, one_of(), optional, described, all_of)


SCHEMAS = st.recursive(scalar_schemas(), _extend, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, seed=st.integers(0, 2**32))
def test_random_schemas_get_valid_deterministic_values(schema: dict[str, Any], seed: int) -> None:
    check(schema)
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    value = instance(schema, random.Random(seed))
    assert validator.is_valid(value), (
        json.dumps(schema),
        json.dumps(value),
        [e.message for e in validator.iter_errors(value)],
    )
    assert instance(schema, random.Random(seed)) == value


def test_a_schema_whose_bounds_multiply_is_refused_not_built() -> None:
    nested: dict[str, object] = {"type": "integer"}
    for _ in range(3):  # 40^3 = 64,000 values at the least
        nested = {"type": "array", "minItems": 40, "items": nested}
    with pytest.raises(UnsupportedSchema, match="more than 50,000 values"):
        instance(nested, random.Random(0))
