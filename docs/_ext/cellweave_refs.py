"""Cross-references that Sphinx cannot resolve: existing cellweave objects without a page of their own render as
code; names that do not exist in cellweave stay warnings (errors under ``-W``); other libraries render as code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from docutils import nodes

EXTERNAL = ("numpy", "np.", "scipy", "sp.", "pandas", "pd.", "torch", "anndata", "ad.", "mudata", "zarr", "dask",
            "tiledbsoma", "pyarrow", "pa.", "faiss", "sklearn", "matplotlib", "os.", "pathlib", "collections", "typing",
            "abc.", "numbers", "dataclasses", "concurrent", "contextlib", "threading", "logging", "h5py", "pynndescent",
            "igraph", "ot.", "scanpy", "plt.", "Path", "Any", "Iterator", "Iterable", "Mapping", "Sequence", "Callable",
            "IterableDataset", "DataLoader", "Tensor", "ndarray", "DataFrame", "Series", "Index", "AnnData", "MuData",
            "Generator", "PathLike", "Figure", "Axes", "Array", "Literal", "TypeVar", "Module", "Optimizer",
            "Experiment", "ExperimentAxisQuery", "csr_matrix", "spmatrix", "sparray", "Delayed", "Client", "dtype",
            "ArrayLike", "NDArray", "LRScheduler", "GradScaler", "device", "Self", "Protocol", "Enum", "tqdm")
BUILTINS = {"int", "float", "str", "bool", "bytes", "dict", "list", "tuple", "set", "frozenset", "None", "object", "type",
            "slice", "range", "callable", "iterable", "optional", "Exception", "ValueError", "RuntimeError", "KeyError",
            "TypeError", "OSError", "FileNotFoundError", "FileExistsError", "complex", "property", "default", "array_like",
            "Ellipsis", "NotImplemented", "sequence", "mapping", "generator", "function", "iterator", "np", "pd", "sp"}


def _resolve(name: str) -> Any:
    """The object a dotted cellweave name stands for, or ``None``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _scopes(module: str | None, cls: str | None, refdoc: str) -> list[str]:
    """Where a relative name may live: the current module and class, and the defining module and class of the
    object whose generated API page holds the reference."""
    scopes = [f"{module}.{cls}" if module and cls else "", module or ""]
    page = refdoc.rsplit("/", 1)[-1]
    if page.startswith("cellweave."):
        obj = _resolve(page)
        if obj is not None and getattr(obj, "__module__", None):
            scopes += [f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else "", obj.__module__]
        if module and cls:
            owner = _resolve(f"{module}.{cls}")
            if isinstance(owner, type):
                scopes += [f"{owner.__module__}.{owner.__qualname__}", owner.__module__]
    return [s for s in scopes if s]


def _submodules(module: str | None) -> list[str]:
    """The modules of the package ``module`` (an autosummary line is read in the package's context, while its
    docstring was written in the defining module's)."""
    package = _resolve(module) if module and module.startswith("cellweave") else None
    if package is None or not hasattr(package, "__path__"):
        return []
    return [f"{module}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]


def _exists(target: str, module: str | None, cls: str | None, refdoc: str) -> bool:
    """Whether ``target`` names a cellweave object (an instance attribute counts when the class sets it), as written
    or relative to the referring module/class."""
    scopes = _scopes(module, cls, refdoc)
    for name in [target] + [f"{s}.{target}" for s in scopes]:
        if not name.startswith("cellweave"):
            continue
        if _resolve(name) is not None:
            return True
    if "." not in target:
        for module_name in _submodules(module):
            if _resolve(f"{module_name}.{target}") is not None:
                return True
        for scope in scopes:
            owner = _resolve(scope)
            if isinstance(owner, type):
                try:
                    source = inspect.getsource(owner)
                except (OSError, TypeError):
                    continue
                if f"self.{target} " in source or f"self.{target}:" in source or f"self.{target}," in source:
                    return True
    return False


def missing_reference(app, env, node, contnode):  # noqa: ANN001, ANN201 (Sphinx event signature)
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    head = target.split("[")[0].strip()
    if head in BUILTINS or head.split(".")[0] in BUILTINS:
        return contnode
    if not head.startswith("cellweave") and head.startswith(EXTERNAL):
        return contnode
    if _exists(head, node.get("py:module"), node.get("py:class"), node.get("refdoc", "")):
        return contnode
    return None  # Sphinx warns: a broken reference


def property_prose(app, what, name, obj, options, lines):  # noqa: ANN001, ANN201 (Sphinx event signature)
    """Undo napoleon's reading of a property or attribute docstring whose first line is prose with a colon ("The loss
    log: one row per step") as ``TYPE: description``: the prose before the colon would become a broken type
    reference. Runs after napoleon; a real type (no space in it) is left alone."""
    if what not in ("property", "attribute"):
        return
    for i, line in enumerate(lines):
        if line.startswith(":type: ") and " " in line[len(":type: "):].strip():
            prose = line[len(":type: "):].strip()
            del lines[i]
            if i > 0 and not lines[i - 1].strip():
                del lines[i - 1]
            first = next((j for j, text in enumerate(lines) if text.strip()), None)
            if first is None:
                lines.append(prose)
            else:
                lines[first] = f"{prose}: {lines[first].lstrip()}"
            return


def setup(app):  # noqa: ANN001, ANN201
    app.connect("missing-reference", missing_reference, priority=900)
    app.connect("autodoc-process-docstring", property_prose, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
