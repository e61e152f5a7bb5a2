"""Schemas of `POST /v1/embeddings`, as OpenAI defines them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.inference import MAX_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, Prompt, SamplingParams
from gateway.unserved import IGNORED


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`: one text or a list of texts."""

    # fields beyond these are kept, to be refused by name (never silently ignored)
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"a text or up to {MAX_EMBEDDING_INPUTS} texts (token ids are not served)"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _texts(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input: at least one text")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input: at most {MAX_EMBEDDING_INPUTS} texts in one request")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("input: token ids are not served; send the text")
        if any(not t for t in texts):
            raise ValueError("input: an empty text has no embedding")
        return value

    def texts(self) -> tuple[str, ...]:
        """The inputs."""
        return (self.input,) if isinstance(self.input, str) else tuple(map(str, self.input))

    def unserved(self) -> Iterator[tuple[str, str]]:
        """(field, why) for every field sent that dim would not honour."""
        for name in self.model_extra or {}:
            if name not in IGNORED:
                yield name, f"unknown parameter {name!r}"

    def prompt(self) -> Prompt:
        """The inputs as dim's prompt."""
        return Prompt(texts=self.texts())

    def params(self) -> SamplingParams:
        """What the engine is asked for."""
        return SamplingParams(max_tokens=1, embed=True, dimensions=self.dimensions)


class Embedding(BaseModel):
    """One input's vector."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingUsage(BaseModel):
    """Tokens the inputs took."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """The answer: a vector per input, in order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
