"""The parts of a chat request that declare tools and ask for structured output, and how they go on the wire.

``tools`` are functions with a JSON Schema for their arguments; ``tool_choice`` says whether the model may
(``auto``), must (``required``, or a named function) or must not (``none``) call them; ``response_format`` asks for
JSON (``json_object``) or JSON of a schema (``json_schema``). ``strict`` is accepted for both and changes nothing
here: a forced call and a structured answer always follow their schema (the runtime constrains decoding).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import wire

__all__ = ["FunctionDefinition", "JsonSchemaFormat", "NamedToolChoice", "ResponseFormat", "ToolDefinition"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the arguments always follow ``parameters``: calls are constrained when forced

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
