"""The small, safe template syntax of step, reduce and judge prompts.

A reference is ``{{ name }}`` or ``{{ name.part }}``: letters, digits, ``_`` and ``-`` joined by
dots, spaces inside the braces allowed. Nothing is evaluated: a reference is looked up in a
mapping of strings, and a template with a reference outside the allowed set, or with braces that
are not a reference, is refused before the job is accepted. ``{{{{`` writes a literal ``{{``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_REF = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_ESCAPED = "{{{{"


class TemplateError(ValueError):
    """A template that cannot be rendered, with what is wrong in words."""


def references(template: str) -> list[str]:
    """Every reference in `template`, in order; raises `TemplateError` on stray braces."""
    refs: list[str] = []
    rest = template.replace(_ESCAPED, "")
    pos = 0
    for m in _REF.finditer(rest):
        _no_stray(rest[pos : m.start()])
        refs.append(m.group(1))
        pos = m.end()
    _no_stray(rest[pos:])
    return refs


def _no_stray(text: str) -> None:
    if "{{" in text or "}}" in text:
        snippet = text[max(0, text.find("{{") if "{{" in text else text.find("}}")) :][:40]
        raise TemplateError(
            f"'{snippet}' is not a template reference: write {{{{ name }}}} with letters, "
            "digits, '_', '-' and dots, or {{{{{{{{ for a literal '{{'"
        )


def check(template: str, allowed: Callable[[str], bool], where: str) -> None:
    """Raise `TemplateError` naming `where` unless every reference is `allowed`."""
    for ref in references(template):
        if not allowed(ref):
            raise TemplateError(f"{where}: unknown reference {{{{ {ref} }}}}")


RENDER_MAX_BYTES = 8 * 1024 * 1024  # a rendered prompt, at most


def render(template: str, values: Mapping[str, str], limit: int = RENDER_MAX_BYTES) -> str:
    """Replace every reference by its value; a missing value, or a result over `limit` bytes
    (counted as it grows, before it is joined), is a `TemplateError`."""
    references(template)  # refuse stray braces here too
    size = len(_REF.sub("", template).encode())

    def one(m: re.Match[str]) -> str:
        nonlocal size
        ref = m.group(1)
        if ref not in values:
            raise TemplateError(f"no value for {{{{ {ref} }}}}")
        size += len(values[ref].encode())
        if size > limit:
            raise TemplateError(f"the rendered prompt passes {limit:,} bytes")
        return values[ref]  # inserted as data: a substitution is never scanned again

    return "{{".join(_REF.sub(one, part) for part in template.split(_ESCAPED))
