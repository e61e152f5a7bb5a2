"""Schema-valid JSON values, for the simulated engine's structured outputs.

The simulated engine answers OpenAI ``response_format: json_schema`` and forced tool calls with a
value made here: a pure function of (schema, rng), so a request always gets the same JSON. `check`
walks a schema (and every ``$ref`` it reaches) and raises `UnsupportedSchema`, naming the JSON
pointer of the offending keyword, for anything `instance` could not always honour.

Supported: ``type`` (and lists of types), ``enum``/``const`` (beside ``type`` only), objects
(``properties``, ``required``, ``additionalProperties``, ``min``/``maxProperties``), arrays
(``items``, ``prefixItems``, draft-7 item lists, ``min``/``maxItems``, ``uniqueItems`` with
``minItems`` <= 1), strings (``min``/``maxLength``; the formats date-time, date, time, email, uuid
and uri; a ``pattern`` only when it is one character class with a quantifier, like
``^[a-z0-9_]{3,16}$``), numeric bounds and ``multipleOf``, ``anyOf``/``oneOf`` (one branch is
picked; branches we cannot honour are skipped), ``allOf`` (merged when the parts agree), local
``$ref`` such as pydantic's ``#/$defs/...``; annotations are ignored. Refused: other formats and
patterns, ``not``, ``if``/``then``/``else``, ``patternProperties``, ``propertyNames``,
``contains``, dependencies. Limit: a ``oneOf`` value matches only its own branch when the branches
are disjoint (by type, ``const`` or a required tag, as pydantic's discriminated unions are); for
overlapping branches (``integer`` and ``number``, say) it may match several.

Recursion through ``$ref`` is cut by switching, below depth 3, to minimal values: no optional
properties, ``minItems`` items, and the union branch that forces the fewest ``$ref``\\s (so null or
an empty list); a schema whose minimal value still needs more than 32 nested ``$ref``\\s is refused.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, NoReturn
from urllib.parse import unquote

MAX_DEPTH = 32  # nested $ref expansions a minimal value may need
_SOFT_DEPTH = 3  # from this many nested $refs on, values are minimal
_MAX_COUNT = 10_000  # the largest minLength/minItems/minProperties honoured
_MAX_VALUES = 50_000  # values one pass may make: nested bounds multiply (a schema bomb)
_WORDS = ("alpha", "river", "stone", "light", "quiet", "north", "signal", "garden", "amber", "echo")
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")  # cheapest first
_REFUSED = {"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies"}
_REFUSED |= {"patternProperties", "propertyNames", "contains", "minContains", "maxContains"}
_REFUSED |= {"$dynamicRef", "$recursiveRef", "contentEncoding", "contentMediaType", "contentSchema"}
_KEYS = {  # the keywords that say which type an untyped schema means, in order of precedence
    "object": ("properties", "required", "additionalProperties", "minProperties", "maxProperties"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}
_CONSTRAINTS = {k for keys in _KEYS.values() for k in keys} | {"unevaluatedProperties"}
_CONSTRAINTS |= {"unevaluatedItems"}
_ASSERTING = _CONSTRAINTS | _REFUSED | {"type", "enum", "const", "anyOf", "oneOf", "allOf"}
_LOWER = {"minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum"}
_UPPER = {"maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum"}
_PATTERN = re.compile(r"\^?(\[(?:[^\]\\]|\\.)*\]|\\[dw]|\.)(\+|\*|\?|\{(\d+)(,(\d*))?\})?(\$?)")
_CLASSES = {"d": string.digits, "w": string.ascii_letters + string.digits + "_"}


class UnsupportedSchema(ValueError):
    """A schema keyword or shape the generator cannot honour; the message names its JSON pointer."""


def check(schema: Mapping[str, Any]) -> None:
    """Raise UnsupportedSchema unless instance() can always produce a value valid against schema."""
    if not isinstance(schema, Mapping):
        _fail("", "a schema must be a JSON object")
    walker = _Gen(schema, random.Random(0), (), "walk")
    walker.gen(schema, "", 0)
    for node, path in walker.nodes:  # every place where $ref recursion may turn minimal
        _Gen(schema, random.Random(0), (), "minimal").gen(node, path, 0)


def instance(schema: Mapping[str, Any], rng: random.Random, *, words: Sequence[str] = ()) -> Any:
    """A JSON value valid against schema, drawn from rng; raises UnsupportedSchema like check()."""
    check(schema)
    return _Gen(schema, rng, words, "random").gen(schema, "", 0)


def json_object(rng: random.Random, words: Sequence[str]) -> dict[str, Any]:
    """A small plausible JSON object, for response_format json_object (no schema)."""
    pool = _Gen({}, rng, words, "random").words
    return {"answer": " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8)))}


class _Gen:
    """One pass over a schema: 'random' draws a value, 'minimal' the smallest, 'walk' checks all."""

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str], mode: str) -> None:
        self.root, self.rng, self.mode = root, rng, mode
        self.words = [w for w in words if isinstance(w, str) and w.strip()] or list(_WORDS)
        self.seen: set[str] = set()  # walk: $ref/allOf nodes already visited
        self.nodes: list[tuple[Any, str]] = []  # walk: those nodes, for the minimal dry runs
        self.made = 0  # values made so far (bounded: `_MAX_VALUES`)

    def gen(self, schema: Any, path: str, depth: int) -> Any:
        """A value for schema (walk mode: None after checking it and all below it)."""
        self.made += 1
        if self.made > _MAX_VALUES:
            _fail(path, f"the schema asks for more than {_MAX_VALUES:,} values in one answer")
        if self.mode == "walk" and isinstance(schema, Mapping) and {"$ref", "allOf"} & set(schema):
            key = json.dumps(schema, sort_keys=True, default=repr)
            if key in self.seen:
                return None
            self.seen.add(key)
            self.nodes.append((schema, path))
        s, path, depth = self._resolve(schema, path, depth)
        if self.mode != "walk" and depth > MAX_DEPTH + (self.mode == "random") * _SOFT_DEPTH:
            _fail(path, f"$ref recursion deeper than {MAX_DEPTH} with no terminating branch")
        for key in s:
            if key in _REFUSED or (
                str(key).startswith("unevaluated") and not isinstance(s[key], bool)
            ):
                _fail(f"{path}/{key}", f"'{key}' is not supported")
        if "anyOf" in s or "oneOf" in s:
            return self._union(s, path, depth)
        if "enum" in s or "const" in s:
            return self._enum(s, path)
        types = _types(s, path)
        if self.mode == "walk":
            for t in types:
                self._typed(t, s, path, depth)
            return None
        return self._typed(
            types[0] if self._minimal(depth) else self.rng.choice(types), s, path, depth
        )

    def _minimal(self, depth: int) -> bool:
        return self.mode == "minimal" or depth >= _SOFT_DEPTH

    def _resolve(self, schema: Any, path: str, depth: int) -> tuple[dict[str, Any], str, int]:
        """Follow $ref and merge allOf until neither is left at the top of schema."""
        for _ in range(MAX_DEPTH):
            if depth > 4 * MAX_DEPTH:
                _fail(path, f"$ref recursion deeper than {4 * MAX_DEPTH}")
            if schema is True:
                return {}, path, depth
            if not isinstance(schema, Mapping):
                _fail(path, "false admits no value" if schema is False else "not a schema")
            if "$ref" in schema:
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                target, path = self._deref(schema["$ref"], f"{path}/$ref")
                schema, depth = _merge(target, rest, path), depth + 1
            elif "allOf" in schema:
                merged = {k: v for k, v in schema.items() if k != "allOf"}
                for i, part in enumerate(_list(schema, "allOf", path)):
                    part, _, below = self._resolve(part, f"{path}/allOf/{i}", depth)
                    merged, depth = _merge(merged, part, f"{path}/allOf/{i}"), max(depth, below)
                schema = merged
            else:
                return dict(schema), path, depth
        raise UnsupportedSchema(f"{path or '/'}: more than {MAX_DEPTH} $ref/allOf in a row")

    def _deref(self, ref: Any, path: str) -> tuple[Any, str]:
        if not isinstance(ref, str) or not ref.startswith("#") or ref[1:2] not in ("", "/"):
            _fail(path, f"only local '#/...' references are supported, not {ref!r}")
        node, pointer = self.root, unquote(ref[1:])
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                _fail(path, f"unresolvable $ref {ref!r}")
        return node, pointer

    def _union(self, s: dict[str, Any], path: str, depth: int) -> Any:
        key = "anyOf" if "anyOf" in s else "oneOf"
        rest = {k: v for k, v in s.items() if k != key}
        options, errors = [], []
        for i, branch in enumerate(_list(s, key, path)):
            bpath, seen, nodes = f"{path}/{key}/{i}", set(self.seen), len(self.nodes)
            try:
                merged = _merge(rest, branch, bpath)
                walker = (
                    self if self.mode == "walk" else _Gen(self.root, random.Random(0), (), "walk")
                )
                walker.gen(merged, bpath, depth if walker is self else 0)
                options.append((merged, bpath))
            except UnsupportedSchema as exc:  # skip the branch; fail if none is left
                self.seen, self.nodes[nodes:] = seen, []
                errors.append(exc)
        if not options:
            raise errors[0]
        if self.mode == "walk":
            return None
        pick = min(options, key=lambda o: _cost(o[0])) if self._minimal(depth) else None
        merged, bpath = pick or self.rng.choice(options)
        return self.gen(merged, bpath, depth)

    def _enum(self, s: dict[str, Any], path: str) -> Any:
        for k in s:
            if k in _CONSTRAINTS:
                _fail(f"{path}/{k}", f"'{k}' beside enum/const is not supported")
        values = _list(s, "enum", path) if "enum" in s else [s["const"]]
        if "const" in s:
            values = [v for v in values if _key(v) == _key(s["const"])]
        types = _types(s, path) if "type" in s else list(_TYPES)
        values = [v for v in values if any(_is_type(v, t) for t in types)]
        if not values:
            _fail(
                f"{path}/{'enum' if 'enum' in s else 'const'}", "no value fits enum/const and type"
            )
        return copy.deepcopy(self.rng.choice(values))

    def _typed(self, t: str, s: dict[str, Any], path: str, depth: int) -> Any:
        if t in ("integer", "number"):
            return self._number(s, path, t == "integer")
        if t == "string":
            return self._string(s, path)
        if t == "array":
            return self._array(s, path, depth)
        if t == "object":
            return self._object(s, path, depth)
        return None if t == "null" else self.rng.random() < 0.5

    def _object(self, s: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        props, extra = _dict(s, "properties", path), s.get("additionalProperties", True)
        closed = extra is False or s.get("unevaluatedProperties") is False
        extra = extra if isinstance(extra, Mapping) else {}
        required = _list(s, "required", path, [])
        if any(not isinstance(n, str) or (closed and n not in props) for n in required):
            _fail(f"{path}/required", "a required name is not a string or not allowed")
        required = list(dict.fromkeys(required))
        lo, hi = _range(s, "minProperties", "maxProperties", path)
        optional = [n for n in props if n not in required and props[n] is not False]
        if (hi is not None and len(required) > hi) or (closed and lo > len(required + optional)):
            _fail(f"{path}/minProperties", "min/maxProperties conflict with the properties")
        if self.mode == "walk":
            for name in [*required, *optional]:
                self.gen(props.get(name, extra), _at(path, name, props), depth)
            return {"": self.gen(extra, f"{path}/additionalProperties", depth)} if extra else {}
        minimal, room = self._minimal(depth), _MAX_COUNT if hi is None else hi
        keep = required + [n for n in optional if not minimal and self.rng.random() < 0.5]
        keep = keep[: max(room, len(required))]
        keep += [n for n in optional if n not in keep][: max(0, lo - len(keep))]
        names = [n for n in props if n in keep] + [n for n in required if n not in props]
        more = max(0, lo - len(names))
        if not (closed or minimal or props or more or "additionalProperties" not in s):
            more = min(self.rng.randint(1, 2), room - len(names))  # a dict-like object
        names += self._fresh(more, set(props) | set(names))
        return {n: self.gen(props.get(n, extra), _at(path, n, props), depth) for n in names}

    def _fresh(self, count: int, taken: set[str]) -> list[str]:
        names: list[str] = []
        for i in range(count * 100):
            if len(names) == count:
                break
            name = self.rng.choice(self.words).replace(" ", "_")
            name = name if name not in taken else f"{name}_{i}"
            if name not in taken:
                taken.add(name)
                names.append(name)
        return names

    def _array(self, s: dict[str, Any], path: str, depth: int) -> list[Any]:
        items = s.get("items", True)
        draft7 = isinstance(items, list)
        prefix = items if draft7 else _list(s, "prefixItems", path, [])
        rest, rkey = (
            (s.get("additionalItems", True), "additionalItems") if draft7 else (items, "items")
        )
        rest = False if rest is True and s.get("unevaluatedItems") is False else rest
        lo, hi = _range(s, "minItems", "maxItems", path)
        hi = min(hi, len(prefix)) if rest is False and hi is not None else hi
        hi = len(prefix) if rest is False and hi is None else hi
        if hi is not None and lo > hi:
            _fail(f"{path}/minItems", "more items required than the schema allows")
        unique = s.get("uniqueItems") is True
        if unique and (lo > 1 or prefix):
            _fail(f"{path}/uniqueItems", "uniqueItems needs minItems <= 1 and no prefixItems")
        pkey = "items" if draft7 else "prefixItems"
        if self.mode == "walk":
            for i, item in enumerate(prefix):
                self.gen(item, f"{path}/{pkey}/{i}", depth)
            return [self.gen(rest, f"{path}/{rkey}", depth)] if not isinstance(rest, bool) else []
        if self._minimal(depth):
            n = lo
        elif prefix:
            n = max(lo, len(prefix) if hi is None else min(hi, len(prefix)))
        else:
            top = max(lo, min(3, 3 if hi is None else hi))
            n = self.rng.randint(min(max(lo, 1), top), top)
        out = [self.gen(item, f"{path}/{pkey}/{i}", depth) for i, item in enumerate(prefix[:n])]
        out += [self.gen(rest, f"{path}/{rkey}", depth) for _ in range(n - len(out))]
        return list({_key(v): v for v in reversed(out)}.values())[::-1] if unique else out

    def _string(self, s: dict[str, Any], path: str) -> str:
        lo, hi = _range(s, "minLength", "maxLength", path)
        fmt, pattern = s.get("format"), s.get("pattern")
        if fmt is not None:
            if not isinstance(fmt, str) or fmt not in _FORMATS or pattern is not None:
                _fail(f"{path}/format", f"format {fmt!r} is not supported (or has a pattern)")
            make, shortest, longest = _FORMATS[fmt]
            if lo > shortest or (hi is not None and hi < longest):
                _fail(f"{path}/format", f"format {fmt!r} cannot meet minLength/maxLength")
            token = "".join(c for c in self.rng.choice(self.words).lower() if c.isalnum())
            return make(self.rng, token[:8] or "user")
        if pattern is None:
            return self._text(lo, hi)
        chars, plo, phi = _pattern(pattern, f"{path}/pattern")
        lo, hi = max(lo, plo), phi if hi is None else hi if phi is None else min(hi, phi)
        if hi is not None and lo > hi:
            _fail(f"{path}/pattern", "pattern cannot meet minLength/maxLength")
        top = max(lo, 8) if hi is None else min(hi, max(lo, 8))
        n = self.rng.randint(min(max(lo, 1), top), top)
        kept = "".join(c for c in self._text(n, None) if c in chars)[:n]
        return kept + "".join(self.rng.choice(chars) for _ in range(n - len(kept)))

    def _text(self, lo: int, hi: int | None) -> str:
        """Words joined by spaces, padded or cut to [lo, hi] characters."""
        words = [self.rng.choice(self.words) for _ in range(1 + 3 * (self.mode == "random"))]
        text = " ".join(words[: self.rng.randint(1, len(words))])
        while len(text) < lo:
            text += " " + self.rng.choice(self.words)
        if hi is not None and len(text) > hi:
            text = text[:hi].rstrip()
            text += "x" * (lo - len(text))
        return text

    def _number(self, s: dict[str, Any], path: str, integer: bool) -> int | float:
        lo, lo_x = _bound(s, "minimum", "exclusiveMinimum", path, lower=True)
        hi, hi_x = _bound(s, "maximum", "exclusiveMaximum", path, lower=False)
        lo_key = f"{path}/{'exclusiveMinimum' if lo_x else 'minimum'}"
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_x or hi_x))):
            _fail(lo_key, "the lower bound exceeds the upper bound")
        m = _num(s, "multipleOf", path)
        if m is not None and m <= 0:
            _fail(f"{path}/multipleOf", "multipleOf must be positive")
        step = m or Fraction(1, 1 if integer else 100)
        step = Fraction(step.numerator) if integer else step  # integer multiples of p/q: of p
        kmin = None if lo is None else math.floor(lo / step) + 1 if lo_x else math.ceil(lo / step)
        kmax = None if hi is None else math.ceil(hi / step) - 1 if hi_x else math.floor(hi / step)
        if kmin is not None and kmax is not None and kmin > kmax:
            if integer or m is not None or lo is None or hi is None:
                _fail(f"{path}/multipleOf" if m else lo_key, "no value fits the bounds")
            middle = float((lo + hi) / 2)  # a narrow range between two steps of 0.01
            if (lo_x and middle <= lo) or (hi_x and middle >= hi):
                _fail(lo_key, "the range is too narrow")
            return middle

        def clamp(k: int) -> int:
            k = k if kmax is None else min(k, kmax)
            return k if kmin is None else max(k, kmin)

        span = max(1, math.floor(100 / step))  # unbounded sides default to values in [0, 100]
        a = clamp(0)
        b = clamp(a + span)
        a = clamp(a - span) if a == b else a
        value = self.rng.randint(a, b) * step
        return int(value) if integer else float(value)


def _fail(path: str, why: str) -> NoReturn:
    raise UnsupportedSchema(f"{path or '/'}: {why}")


def _at(path: str, name: Any, props: Mapping[str, Any]) -> str:
    if name not in props:
        return f"{path}/additionalProperties"
    return f"{path}/properties/" + str(name).replace("~", "~0").replace("/", "~1")


def _list(s: Mapping[str, Any], key: str, path: str, default: Any = None) -> list[Any]:
    value = s.get(key, default)
    if not isinstance(value, list) or (default is None and not value):
        _fail(f"{path}/{key}", f"'{key}' must be a {'non-empty ' * (default is None)}list")
    return value


def _dict(s: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = s.get(key, {})
    if not isinstance(value, Mapping):
        _fail(f"{path}/{key}", f"'{key}' must be an object")
    return value


def _num(s: Mapping[str, Any], key: str, path: str) -> Fraction | None:
    """A numeric keyword as an exact fraction of its decimal spelling (0.1 is 1/10)."""
    value = s.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(f"{path}/{key}", f"'{key}' must be a finite number")
    return Fraction(Decimal(repr(value)))


def _bound(
    s: Mapping[str, Any], key: str, xkey: str, path: str, *, lower: bool
) -> tuple[Any, bool]:
    """The tighter of an inclusive and an exclusive bound, and whether it is exclusive."""
    inclusive, exclusive = _num(s, key, path), _num(s, xkey, path)
    if exclusive is None:
        return inclusive, False
    if inclusive is None:
        return exclusive, True
    tighter = inclusive > exclusive if lower else inclusive < exclusive
    return (inclusive, False) if tighter else (exclusive, True)


def _range(s: Mapping[str, Any], lo_key: str, hi_key: str, path: str) -> tuple[int, int | None]:
    bounds = [s.get(lo_key, 0), s.get(hi_key)]
    for key, value in zip((lo_key, hi_key), bounds, strict=True):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            _fail(f"{path}/{key}", f"'{key}' must be a non-negative integer")
    lo, hi = bounds
    if lo > _MAX_COUNT or (hi is not None and lo > hi):
        _fail(f"{path}/{lo_key}", f"{lo_key} {lo} is too large or exceeds {hi_key}")
    return lo, hi


def _types(s: Mapping[str, Any], path: str) -> list[str]:
    t = s.get("type")
    if t is None:
        return [next((t for t, keys in _KEYS.items() if any(k in s for k in keys)), "string")]
    types = [t] if isinstance(t, str) else t
    if not isinstance(types, list) or not types or any(x not in _TYPES for x in types):
        _fail(f"{path}/type", f"unknown type {t!r}")
    return sorted(set(types), key=_TYPES.index)


def _is_type(value: Any, t: str) -> bool:
    if t in ("integer", "number") and not isinstance(value, bool):
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return ok or (t == "number" and isinstance(value, float))
    kinds: dict[str, Any] = {"null": type(None), "boolean": bool, "string": str}
    return isinstance(value, {**kinds, "array": list, "object": Mapping}.get(t, ()))


def _key(value: Any) -> str:
    """A string equal for equal JSON values (1 == 1.0, but true != 1)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        return [norm(x) for x in v] if isinstance(v, list | tuple) else v

    return json.dumps(norm(value), sort_keys=True, default=repr)


def _merge(a: Mapping[str, Any], b: Any, path: str) -> dict[str, Any]:
    """The allOf of two schemas as one schema, for the cases where they merge simply."""
    a, b = _schema(a, path), _schema(b, path)
    for x, y in ((a, b), (b, a)):
        names = {str(n) for n in [*_dict(y, "properties", path), *_list(y, "required", path, [])]}
        allowed = {str(n) for n in _dict(x, "properties", path)}
        if x.get("additionalProperties", True) is not True and not names <= allowed:
            _fail(f"{path}/additionalProperties", "allOf adds properties it forbids")
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif k in _ASSERTING and _key(out[k]) != _key(v):
            out[k] = _meet(k, out[k], v, path)
    return out


def _schema(schema: Any, path: str) -> Mapping[str, Any]:
    if schema is True:
        return {}
    if not isinstance(schema, Mapping):
        _fail(path, "false admits no value" if schema is False else "not a schema")
    return schema


def _meet(k: str, x: Any, y: Any, path: str) -> Any:
    """The value of keyword k demanding both x and y, or UnsupportedSchema."""
    nums = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
    if k in _LOWER | _UPPER and nums:
        return max(x, y) if k in _LOWER else min(x, y)
    if k == "allOf" and isinstance(x, list) and isinstance(y, list):
        return [*x, *y]
    if k == "type" and all(isinstance(v, str | list) for v in (x, y)):
        xs, ys = ([v] if isinstance(v, str) else v for v in (x, y))
        both = [t for t in xs if t in ys or (t == "integer" and "number" in ys)]
        both += ["integer"] if "number" in xs and "integer" in ys else []
        return list(dict.fromkeys(both)) or _fail(f"{path}/type", "allOf types do not overlap")
    if k == "required" and isinstance(x, list) and isinstance(y, list):
        return list(dict.fromkeys([*x, *y]))
    if k == "properties" and isinstance(x, Mapping) and isinstance(y, Mapping):
        twice = {n: {"allOf": [x[n], y[n]]} for n in x if n in y and _key(x[n]) != _key(y[n])}
        return {**x, **y, **twice}
    if k == "enum" and isinstance(x, list) and isinstance(y, list):
        return [v for v in x if _key(v) in {_key(w) for w in y}]
    if k == "multipleOf" and nums:
        fx, fy = Fraction(Decimal(repr(x))), Fraction(Decimal(repr(y)))
        if (fx / fy).denominator == 1 or (fy / fx).denominator == 1:
            return max(x, y)
    _fail(f"{path}/{k}", f"conflicting '{k}' in allOf")


def _cost(schema: Any) -> int:
    """How many $refs a minimal value of schema must expand, not following them: lower ends."""
    if not isinstance(schema, Mapping):
        return 0
    if "$ref" in schema:
        return 1
    props, required = schema.get("properties", {}), schema.get("required", [])
    n = sum(_cost(props.get(r)) for r in required if isinstance(r, str) and isinstance(props, dict))
    minimum = schema.get("minItems", 0)
    n += _cost(schema.get("items")) if isinstance(minimum, int) and minimum > 0 else 0
    n += sum(_cost(part) for part in schema.get("allOf") or [])
    for key in ("anyOf", "oneOf"):
        n += min((_cost(b) for b in schema.get(key) or []), default=0)
    return n


def _pattern(pattern: Any, path: str) -> tuple[str, int, int | None]:
    """(characters, min length, max length) of a one-class pattern like '^[a-z]{2,8}$'."""
    match = _PATTERN.fullmatch(pattern) if isinstance(pattern, str) else None
    chars = _charset(match.group(1)) if match else ""
    if not match or not chars:
        _fail(path, f"pattern {pattern!r} is not supported (only one character class)")
    quant, lo, comma, hi = match.group(2, 3, 4, 5)
    fixed: dict[str | None, tuple[int, int | None]] = {"+": (1, None), "*": (0, None)}
    fixed |= {"?": (0, 1), None: (1, 1)}
    low, high = fixed.get(quant) or (int(lo), int(hi) if hi else None if comma else int(lo))
    anchored = pattern.startswith("^") and match.group(6) == "$"
    return chars, low, high if anchored else None


def _charset(atom: str) -> str:
    if atom == ".":
        return string.ascii_letters + string.digits + " "
    if atom.startswith("\\"):
        return _CLASSES[atom[1]]
    body, out, i = atom[1:-1], set(), 0
    if body.startswith("^") or "[" in body or any(op in body for op in ("&&", "--", "~~")):
        return ""  # negation, nesting and set operations
    while i < len(body):
        c, i = body[i], i + 1
        if c == "\\":
            if i >= len(body) or (body[i].isalnum() and body[i] not in _CLASSES):
                return ""
            c, i = body[i], i + 1
            if c in _CLASSES:
                out |= set(_CLASSES[c])
                continue
        if i + 1 < len(body) and body[i] == "-" and body[i + 1] != "\\":
            if body[i + 1] < c:
                return ""
            out |= {chr(o) for o in range(ord(c), ord(body[i + 1]) + 1)}
            i += 2
        else:
            out.add(c)
    return "".join(sorted(c for c in out if c.isprintable()))


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2000, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


_FORMATS: dict[str, tuple[Callable[[random.Random, str], str], int, int]] = {
    "date-time": (lambda r, _: f"{_date(r)}T{_time(r)}", 20, 20),
    "date": (lambda r, _: _date(r), 10, 10),
    "time": (lambda r, _: _time(r), 9, 9),
    "email": (lambda _, w: f"{w}@example.com", 13, 20),
    "uri": (lambda _, w: f"https://example.com/{w}", 21, 28),
    "uuid": (lambda r, _: str(uuid.UUID(int=r.getrandbits(128), version=4)), 36, 36),
}
