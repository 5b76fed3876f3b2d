"""Errors raised for bad user input.

Every message names the offending file (or store), the field inside it, what is wrong and what to do.
"""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad user input: names the source, the field, the problem and the fix.

    Parameters
    ----------
    source
        File, store or argument the problem was found in.
    field
        Field inside the source (``X``, ``obs['batch']``, ``var_names`` ...).
    problem
        What is wrong, in plain words.
    fix
        What the user can do about it.
    """

    def __init__(self, source: str | PathLike, field: str, problem: str, fix: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.source}: {field}: {problem}. Fix: {fix}")
