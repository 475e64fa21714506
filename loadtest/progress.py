"""Progress bars (tqdm, on stderr, so stdout keeps its table-then-JSON shape). Off when stderr is not a terminal."""

from __future__ import annotations

from types import TracebackType

from tqdm import tqdm  # type: ignore[import-untyped]

__all__ = ["Progress"]


class Progress:
    def __init__(self, description: str, total: float | None, unit: str = "req") -> None:
        self._bar = tqdm(total=total, desc=description, unit=unit, disable=None, leave=False, dynamic_ncols=True)

    def advance(self, count: float = 1) -> None:
        self._bar.update(count)

    def note(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()
