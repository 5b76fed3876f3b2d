"""The one rule for modality names, checked wherever a name enters (command line, config, Python API, converters).

A modality name becomes part of file names (``RUN/embeddings/<name>.zarr``, ``OUT/<name>.zarr``, learned-link
files), SOMA measurement names and config keys, so it is restricted to letters, digits, ``_``, ``.`` and ``-``
and may not start with a dot: no path separators, no ``..``, no hidden files, nothing a shell or TOML would
need quoted.
"""

from __future__ import annotations

import re

from ..errors import InputError

MODALITY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_modality_name(name: object, source: str = "modality") -> str:
    """``name`` when it is a valid modality name (see the module docstring), else a one-line error.

    Raises
    ------
    InputError
        Naming ``source`` (the argument, file or table the name came from) and the rule.
    """
    if isinstance(name, str) and MODALITY_NAME.fullmatch(name) and not name.startswith("."):
        return name
    raise InputError(source, "modality name", f"{name!r} is not a valid modality name (it becomes part of file names)",
                     "use letters, digits, '_', '.' and '-' only, not starting with '.' (e.g. rna, adt, atac_2)")
