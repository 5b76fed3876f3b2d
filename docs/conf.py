"""Sphinx configuration of the cellweave documentation (``make docs`` builds it with warnings as errors).

Sphinx rather than MkDocs: the library's docstrings are numpy-style reStructuredText full of
``:class:``/``:func:`` cross-references, which Sphinx (autodoc + napoleon) renders and checks as they are,
and myst-nb executes the tutorial notebooks as part of the same build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # document the source tree being built, installed or not
os.environ.setdefault("OMP_NUM_THREADS", "1")  # notebooks run on small data: one thread per kernel is enough

import cellweave  # noqa: E402

project = "cellweave"
author = "the cellweave developers"
copyright = "2026, the cellweave developers"
release = cellweave.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "cellweave_refs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# ---- every cross-reference is checked ------------------------------------------------------------------------------
# A broken reference to a cellweave object is an error; references to objects that exist but have no page of their
# own render as code (see _ext/cellweave_refs.py); references to other libraries render as code (no network here
# for intersphinx inventories).
nitpicky = True

# ---- API reference ---------------------------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True

# ---- notebooks: executed on every build, a failing cell fails the build --------------------------------------------
# A failing cell is reported as a warning with the cell's traceback (an error under -W, as `make docs` runs), so that
# with --keep-going every broken notebook is reported in one build. CELLWEAVE_DOCS_EXECUTE=off skips execution
# while editing prose.
nb_execution_mode = os.environ.get("CELLWEAVE_DOCS_EXECUTE", "force")
nb_execution_timeout = 900  # per cell; a cell takes well under a minute on an idle CPU
nb_execution_raise_on_error = False
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ---- HTML ---------------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"cellweave {release}"
html_static_path: list[str] = []
