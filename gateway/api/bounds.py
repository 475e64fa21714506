"""How deep a request body may nest and what text it may hold, checked at the door: a body that breaks a bound is a
400 naming its field, before it is queued. ``decode_body`` decodes it and refuses text that is no Unicode;
``check_depth`` runs once the request is validated (``gateway.api.schemas``), so that a schema too deep is named by its
own bound and path first.

Every request is stored in Redis and read back by a dispatcher, perhaps on another gateway replica, so the door
must admit only what every later reader can read. The JSON decoder gives up near 1,000 levels (``RecursionError``),
the reader of a queue entry near 200 (a schema nested that deep was queued but could never be read back, which held
up every entry read with it), and text with a lone surrogate (``"\\ud800"`` is valid JSON, but no Unicode) cannot
be encoded as UTF-8 to be stored at all. ``MAX_JSON_DEPTH`` is far below the first two and far above any real
request; tool and response schemas have tighter bounds of their own (``gateway.api.tools``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.errors import InvalidRequest

__all__ = ["MAX_JSON_DEPTH", "check_depth", "decode_body", "depth_exceeds", "field_path"]

#: Deepest a request body may nest, counting the body object as level 1. A chat request's own shape needs 5
#: (body, messages, a message, its content parts, a part); a tool's schema starts at level 5 and may nest
#: ``gateway.api.tools.MAX_SCHEMA_DEPTH`` more. Far below the decoder's ~1,000 and the queue reader's 200 levels.
MAX_JSON_DEPTH = 64

#: A surrogate code point: in decoded JSON text always a lone one (the decoder joins escaped pairs).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What a surrogate looks like in JSON text: an escape (raw surrogate bytes fail decoding).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
#: What JSON nests (a tuple: ``isinstance`` takes it faster than the union ``dict | list``).
_CONTAINERS = (dict, list)


def decode_body(raw: bytes) -> Any:
    """The decoded JSON body; ``InvalidRequest`` (400) if it is not JSON, nests too deep for the decoder
    (``param``: the top-level field that does) or holds a lone surrogate (``param``: where)."""
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise _too_deep(_field_too_deep_to_decode(text)) from None
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if _SURROGATE_ESCAPE.search(text):  # the walk only for a body that may hold one
        _check_text(body)
    return body


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep (``value`` itself is level 1).
    One level at a time, without recursion: safe at any depth; costs one look at every value."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    for _depth in range(limit):
        below: list[Any] = []
        for node in level:
            below += [child for child in _values(node) if isinstance(child, _CONTAINERS)]
        if not below:
            return False
        level = below
    return True


def field_path(parts: Sequence[int | str]) -> str:
    """``('messages', 1, 'content')`` -> ``messages[1].content``: where a value is, as OpenAI's ``param`` says it."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def check_depth(body: dict[str, Any]) -> None:
    """``InvalidRequest`` (400) if ``body`` nests deeper than ``MAX_JSON_DEPTH``; ``param``: the top-level field
    that does."""
    for key, value in body.items():
        if depth_exceeds(value, MAX_JSON_DEPTH - 1):
            raise _too_deep(key)


def _values(node: dict[str, Any] | list[Any]) -> Iterable[Any]:
    return node.values() if isinstance(node, dict) else node


def _too_deep(param: str | None) -> InvalidRequest:
    if param is None:
        return InvalidRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return InvalidRequest(f"Invalid value for '{param}': nests deeper than {MAX_JSON_DEPTH} levels.", param=param)


def _field_too_deep_to_decode(text: str) -> str | None:
    """The top-level field of a body the decoder gave up on for its depth: its members are decoded one by one
    (each in C, as a whole body is), and the first that is too deep names it. None if the body is no object."""
    decoder = json.JSONDecoder()
    at = _skip(text, 0)
    if not text.startswith("{", at):
        return None
    at += 1
    while True:
        try:
            key, at = decoder.raw_decode(text, _skip(text, at))
            at = _skip(text, at)
            if not text.startswith(":", at):
                return None
            _value, at = decoder.raw_decode(text, _skip(text, at + 1))
        except RecursionError:
            return key if isinstance(key, str) else None
        except ValueError:
            return None
        at = _skip(text, at)
        if not text.startswith(",", at):
            return None
        at += 1


def _skip(text: str, at: int) -> int:
    """Past the JSON whitespace at ``at``."""
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _check_text(body: Any) -> None:
    """Refuse the first string (or object key) that holds a surrogate: no Unicode, it cannot be stored. (Nor
    echoed: the error names where it is, never the text itself.)"""
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if match := _SURROGATE.search(value):
                raise _not_unicode(path, "text", match.group())
        elif isinstance(value, dict):
            for key, child in reversed(value.items()):
                if match := _SURROGATE.search(key):
                    raise _not_unicode(path, "a key", match.group())
                stack.append(((*path, key), child))
        elif isinstance(value, list):
            stack.extend(((*path, index), child) for index, child in reversed(list(enumerate(value))))


def _not_unicode(path: tuple[int | str, ...], what: str, surrogate: str) -> InvalidRequest:
    param = field_path(path) or None
    where = f"Invalid value for '{param}'" if param else "Invalid request body"
    reason = f"{what} must be valid Unicode, not a lone surrogate (U+{ord(surrogate):04X})"
    return InvalidRequest(f"{where}: {reason}.", param=param)
