"""Find feature names case-insensitively, preferring an exact match."""

from __future__ import annotations

from collections.abc import Iterable


class NameMatcher:
    """Look names up among a modality's features: the exact name first, else the first case-insensitive match.

    Case-insensitive matching lets a human symbol find a mouse feature (``CD3E`` -> ``Cd3e``).

    Parameters
    ----------
    names
        The modality's feature names.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.folded: dict[str, str] = {}
        for name in map(str, names):
            self.exact.add(name)
            self.folded.setdefault(name.casefold(), name)

    def find(self, name: str) -> str | None:
        """The feature matching ``name``, or None."""
        return name if name in self.exact else self.folded.get(name.casefold())
