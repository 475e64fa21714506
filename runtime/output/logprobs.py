"""Log-probabilities as the wire carries them: token ids made into text and bytes.

The sampler (``runtime.torch_engine.sampling``) reports, per position, a ``Logprob``: the chosen token's
log-probability and its
most likely alternatives as ids. A ``Vocabulary`` turns those into ``wire.TokenLogprob`` entries: each token's
bytes (what it adds to the text) and its text, ``bytes:\\xNN...`` where the bytes are not whole UTF-8 characters (a
character split over several tokens), as OpenAI writes them. ``token_bytes_table`` finds every token's bytes for a
Hugging Face tokenizer, byte-level BPE and SentencePiece alike. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wire import TokenLogprob, TopLogprob

__all__ = ["Logprob", "Vocabulary", "token_bytes_table", "token_text"]


@dataclass(frozen=True)
class Logprob:
    """One position's scores: the chosen token's log-probability (None for an echoed prompt's first token) and the
    ``k`` most likely token ids with theirs, most likely first."""

    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def token_text(raw: bytes) -> str:
    """A token's text: its bytes as UTF-8, or ``bytes:\\xe2\\x80`` where they are not whole characters."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


class Vocabulary:
    """Token id -> bytes, and the wire entries built from them."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._bytes = token_bytes

    def top(self, token_id: int, logprob: float) -> TopLogprob:
        raw = self._bytes(token_id)
        return TopLogprob(token=token_text(raw), bytes=tuple(raw), logprob=logprob)

    def entry(self, token_id: int, scored: Logprob) -> TokenLogprob:
        raw = self._bytes(token_id)
        top = tuple(self.top(alternative, logprob) for alternative, logprob in scored.top)
        return TokenLogprob(token=token_text(raw), bytes=tuple(raw), logprob=scored.logprob, top_logprobs=top)

    def entries(self, token_ids: Sequence[int], scores: Sequence[Logprob]) -> tuple[TokenLogprob, ...]:
        return tuple(self.entry(token, scored) for token, scored in zip(token_ids, scores, strict=True))


def token_bytes_table(tokenizer: Any, size: int) -> list[bytes]:
    """Every token's bytes, for ids ``0..size-1`` (the model's vocabulary may be larger than the tokenizer's).
    Special tokens add nothing: the runtime decodes with ``skip_special_tokens``."""
    count = len(tokenizer)
    pieces: list[str | None] = list(tokenizer.convert_ids_to_tokens(list(range(count))))
    special = set(tokenizer.all_special_ids)
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    piece_bytes = _piece_decoder(tokenizer)
    table: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        raw = None if token_id in added or piece is None else piece_bytes(piece)
        if token_id in special:
            raw = b""
        elif raw is None:
            raw = str(tokenizer.decode([token_id], skip_special_tokens=True)).encode()
        table.append(raw)
    return table + [b""] * max(0, size - count)


def _piece_decoder(tokenizer: Any) -> Callable[[str], bytes | None]:
    """How this tokenizer's pieces map to bytes, from its decoder; None for a piece it cannot say."""
    kinds = _decoder_kinds(tokenizer)
    if "ByteLevel" in kinds:
        return _byte_level
    if "ByteFallback" in kinds or "Metaspace" in kinds or "Replace" in kinds:
        return _sentencepiece
    return lambda _piece: None


def _decoder_kinds(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {str(part.get("type")) for part in parts}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters, which byte-level BPE pieces are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


_BYTE_OF_CHAR = {char: byte for byte, char in _bytes_to_unicode().items()}


def _byte_level(piece: str) -> bytes | None:
    try:
        return bytes(_BYTE_OF_CHAR[char] for char in piece)
    except KeyError:
        return None


def _sentencepiece(piece: str) -> bytes | None:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode()
