"""What of the OpenAI API this gateway does not honour, said plainly: one 400 per feature, naming it and where it is.

``refuse_unsupported`` looks at a decoded request body *before* it is validated, so that a request using a feature
we lack (an image part, audio, deprecated function calling) hears about that feature rather than about a type it
failed to match. Fields that cannot change the output (``user``, ``store``, ``metadata``...) are accepted and ignored
(``IGNORED``); they are declared in the request models like any other field. Every other field the request models
do not know gets OpenAI's own "Unrecognized request argument" 400 (``gateway.api.schemas``). docs/openai-api.md lists
every field of both endpoints and what happens to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from gateway.errors import Unsupported

__all__ = ["IGNORED", "refuse_unsupported"]

#: Request fields accepted and ignored, and why that cannot change the answer.
IGNORED: Mapping[str, str] = {
    "user": "an end-user id for the provider's abuse monitoring",
    "safety_identifier": "an end-user id for the provider's abuse monitoring",
    "store": "whether the provider keeps the completion for its dashboard; nothing is kept here",
    "metadata": "tags for stored completions; nothing is kept here",
    "service_tier": "the provider's pricing and latency tier",
    "prompt_cache_key": "a routing hint for the provider's prompt cache",
    "prompt_cache_retention": "how long the provider keeps a cached prompt prefix",
    "prompt_cache_options": "the provider's prompt-cache breakpoints and lifetime",
    "prediction": "predicted output, a latency optimisation: the answer is the model's either way",
}

#: Content part types that are model inputs this gateway cannot take, and what to call them.
_INPUT_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}

#: Chat fields that ask for something not implemented yet, and how to call that feature.
_NOT_YET = {
    "functions": "function calling ('functions', deprecated; use 'tools')",
    "web_search_options": "web search ('web_search_options')",
    "audio": "audio output ('audio')",
    "reasoning_effort": "'reasoning_effort' (this model does not reason in a separate phase)",
    "verbosity": "'verbosity'",
    "moderation": "moderation ('moderation')",
}


def refuse_unsupported(kind: Literal["completion", "chat"], body: Mapping[str, Any]) -> None:
    """Raise ``Unsupported`` (400, with ``param``) for the first feature of ``body`` this gateway does not honour."""
    if kind == "completion":
        _completion(body)
    else:
        _chat(body)


def _completion(body: Mapping[str, Any]) -> None:
    if body.get("suffix"):
        raise Unsupported("'suffix' (inserting text before a suffix) is not supported by this model.", param="suffix")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise Unsupported(
            "'best_of' (generating several completions and returning the best) is not supported; ask for 'n' "
            "completions and choose among them.",
            param="best_of",
        )


def _chat(body: Mapping[str, Any]) -> None:
    for field, feature in _NOT_YET.items():
        if body.get(field) not in (None, [], False):
            raise Unsupported(f"{feature[0].upper()}{feature[1:]} is not supported yet.", param=field)
    if body.get("function_call") not in (None, "none"):
        raise Unsupported(
            "Function calling ('function_call', deprecated; use 'tool_choice') is not supported yet.",
            param="function_call",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise Unsupported("Only text output is supported ('modalities' must be [\"text\"]).", param="modalities")
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if isinstance(message, Mapping):
                _message(index, message)


def _message(index: int, message: Mapping[str, Any]) -> None:
    where = f"messages[{index}]"
    if message.get("role") == "function":
        raise Unsupported("The 'function' role (deprecated function calling) is not supported.", param=where + ".role")
    for field in ("audio", "function_call"):
        if message.get(field) is not None:
            what = "Audio in messages" if field == "audio" else "Function calling ('function_call', deprecated)"
            raise Unsupported(f"{what} is not supported.", param=f"{where}.{field}")
    content = message.get("content")
    if isinstance(content, list):
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in _INPUT_PARTS:
                raise Unsupported(
                    f"{_INPUT_PARTS[kind].capitalize()} inputs are not supported by this model.",
                    param=f"{where}.content[{number}].{kind}",
                )
