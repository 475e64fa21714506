"""The parts of a chat request that declare tools and ask for structured output, and how they go on the wire.

``tools`` are functions with a JSON Schema for their arguments; ``tool_choice`` says whether the model may
(``auto``), must (``required``, or a named function) or must not (``none``) call them; ``response_format`` asks for
JSON (``json_object``) or JSON of a schema (``json_schema``). ``strict`` is accepted for both and changes nothing
here: a forced call and a structured answer always follow their schema (the runtime constrains decoding).

Each schema (a tool's ``parameters``, a format's ``schema``) is bounded in depth and size: the runtime compiles it
into a grammar and the chat template renders tools into the prompt, so an unbounded one costs the replica, and
every request batched with it, work out of proportion to its bytes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import wire
from gateway.api.bounds import depth_exceeds

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "FunctionDefinition",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolDefinition",
    "bounded_schema",
]

#: Deepest one schema may nest (the schema object is level 1). Real schemas stay well below: OpenAI allows 10
#: levels of nested objects, which with ``properties``, ``items`` and ``anyOf`` between them come to 20-40 JSON
#: levels. Leaves a tool's schema inside ``gateway.api.bounds.MAX_JSON_DEPTH`` with room to spare.
MAX_SCHEMA_DEPTH = 48
#: Largest one schema may be, in bytes of compact JSON: a few hundred properties with descriptions; a request's
#: schemas together are bounded by the body limit (``KALTSTART_MAX_BODY_BYTES``).
MAX_SCHEMA_BYTES = 64 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the arguments always follow ``parameters``: calls are constrained when forced

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return bounded_schema(schema)

    def to_wire(self) -> wire.Tool:
        return wire.Tool(
            function=wire.FunctionDefinition(name=self.name, description=self.description, parameters=self.parameters)
        )


class ToolDefinition(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Body):
    name: str = Field(min_length=1)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the answer always follows the schema: it is constrained either way

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return bounded_schema(schema)


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs 'json_schema'")
        return self

    def to_wire(self) -> wire.ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return wire.ResponseFormat(type="json_object")
        assert self.json_schema is not None
        return wire.ResponseFormat(type="json_schema", json_schema=self.json_schema.schema_ or {})


def bounded_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """``schema`` if it is within ``MAX_SCHEMA_DEPTH`` and ``MAX_SCHEMA_BYTES``; else a ``ValueError`` saying which
    (the depth is looked at first: measuring the size of a deeper one would recurse)."""
    if schema is None:
        return None
    if depth_exceeds(schema, MAX_SCHEMA_DEPTH):
        raise ValueError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    compact = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    if len(compact.encode(errors="surrogatepass")) > MAX_SCHEMA_BYTES:
        raise ValueError(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes as JSON")
    return schema
