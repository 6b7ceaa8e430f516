"""Unpickling checkpoints that hold more than tensors, without ever running code from them.

PyTorch Lightning and DeepSpeed checkpoints carry, besides the ``state_dict``, pickled Python
objects: hyper-parameters (dicts, OmegaConf ``DictConfig``/``ListConfig``, ``argparse.Namespace``,
``pathlib`` paths), numpy scalars, callback and loop states of classes from the training code.
``torch.load(weights_only=True)`` refuses all of them. Loading with plain ``pickle`` would run
whatever the file names (``os.system`` included). Here, in two passes:

1. ``torch.load(weights_only=True)`` with the harmless data types below allow-listed
   (:data:`HARMLESS_GLOBALS`): PyTorch's own hardened unpickler.
2. If that refuses an object, a restricted unpickler (:func:`restricted_pickle_module`):
   every global a pickle names resolves to PyTorch's own allow-list, to :data:`HARMLESS_GLOBALS`,
   or to an inert placeholder (:class:`Ignored`) that records its arguments and is never the real
   class or function, so nothing from the file is ever called. A global of a module that exists
   to run code (``os``, ``subprocess``, ``builtins.eval``, ...) refuses the whole file
   (:class:`PickledCodeError`): such a file is broken or malicious, and saying so beats loading it
   quietly.

Only the ``state_dict`` of the result is used (``lvdm.checkpoint``); the placeholders are dropped.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import datetime
import io
import logging
import pathlib
import pickle
import types
import typing
from collections.abc import Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Modules whose globals exist to run code, read or write files, or reach the network. A pickle
# naming one of them is refused outright (the harmless builtins are allow-listed first). Any other
# unknown global (a training callback's class, functools.partial, ...) becomes a placeholder: it
# would be inert too, but a file that names these has no business being a checkpoint.
CODE_MODULES = frozenset(
    {
        "__builtin__", "builtins", "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess",
        "shutil", "importlib", "runpy", "pty", "socket", "ctypes", "pickle", "_pickle", "marshal",
        "code", "codeop", "types", "webbrowser", "pdb", "multiprocessing", "signal", "commands", "io",
        "_io", "tempfile", "threading", "_thread", "asyncio", "urllib", "http", "requests", "dill",
        "cloudpickle",
    }
)  # fmt: skip


class PickledCodeError(pickle.UnpicklingError):
    """The pickle names a function that runs code (``os.system``, ``builtins.exec``, ...)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the pickle names {name}, which would run code when loaded")
        self.name = name


def _harmless_globals() -> dict[str, object]:
    """Data types that Lightning/DeepSpeed checkpoints pickle besides tensors, by pickled name.

    Each is plain data: building one (with any arguments a pickle can give) reads no file,
    imports nothing and calls nothing from the file.
    """
    from omegaconf import DictConfig, ListConfig
    from omegaconf import base as omegaconf_base
    from omegaconf import nodes as omegaconf_nodes

    out: dict[str, object] = {}
    for name in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
        "bytearray", "bool", "slice", "range", "object",
    ):  # fmt: skip
        out[f"builtins.{name}"] = getattr(builtins, name)
    for cls in (
        collections.OrderedDict, collections.defaultdict, collections.Counter, collections.deque,
        argparse.Namespace, datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
        datetime.timezone, pathlib.PurePath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
        pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, DictConfig, ListConfig,
        omegaconf_base.Metadata, omegaconf_base.ContainerMetadata,
    ):  # fmt: skip
        out[f"{cls.__module__}.{cls.__qualname__}"] = cls
    out["typing.Any"] = typing.Any
    for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode"):
        if hasattr(omegaconf_nodes, node):
            out[f"omegaconf.nodes.{node}"] = getattr(omegaconf_nodes, node)
    # numpy scalars and arrays (numpy 2 pickles ``numpy._core``; files from numpy 1 name ``numpy.core``).
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{module}.scalar"] = multiarray.scalar
        out[f"{module}._reconstruct"] = multiarray._reconstruct
    out["numpy.dtype"] = np.dtype
    out["numpy.ndarray"] = np.ndarray
    for name in dir(getattr(np, "dtypes", None) or ()):
        if name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return out


HARMLESS_GLOBALS: dict[str, object] = _harmless_globals()


def safe_globals_for_torch() -> list[tuple[object, str]]:
    """:data:`HARMLESS_GLOBALS` in the form ``torch.serialization.safe_globals`` takes."""
    return [(obj, name) for name, obj in HARMLESS_GLOBALS.items()]


class Ignored:
    """An inert stand-in for a pickled object whose type is not known to be harmless.

    Whatever the pickle does with it (call it, create it, set its state, add items) is recorded
    and nothing else happens. Subclasses made by :func:`restricted_pickle_module` carry the
    pickled name in ``pickled_name``.
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Ignored:
        # Pickle's NEWOBJ creates objects with __new__ alone (no __init__): set everything here.
        self = object.__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: list[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded the arguments

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.items.extend(items)

    def add(self, item: Any) -> None:
        self.items.append(item)

    def __call__(self, *args: Any, **kwargs: Any) -> Ignored:
        # A pickle may call the result of an earlier call (a factory's product): still inert.
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ignored {self.pickled_name}>"


def restricted_pickle_module(ignored: set[str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load(weights_only=False)`` that never runs code from the file.

    Globals resolve to PyTorch's ``weights_only`` allow-list, to :data:`HARMLESS_GLOBALS`, or to a
    subclass of :class:`Ignored` named after the global (its name is added to ``ignored``).
    Globals of :data:`CODE_MODULES` raise :class:`PickledCodeError`.

    PyTorch subclasses ``Unpickler`` to map its storage classes and to read the tensors' data
    from the archive; every other global goes through :meth:`find_class` here (``GLOBAL``,
    ``STACK_GLOBAL``, ``INST``, ``OBJ`` and the copyreg extension opcodes all call it).
    """
    from torch import _weights_only_unpickler

    allowed = {**_weights_only_unpickler._get_allowed_globals(), **HARMLESS_GLOBALS}
    placeholders: dict[str, type[Ignored]] = {}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            # Protocol-2 pickles (torch.save's default) name some modules by their Python 2 names
            # (__builtin__, copy_reg); pickle's own find_class maps them, so this one does too.
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if module.split(".")[0] in CODE_MODULES:
                raise PickledCodeError(full)
            if full not in placeholders:
                placeholders[full] = type(name.replace(".", "_"), (Ignored,), {"pickled_name": full})
                ignored.add(full)
            return placeholders[full]

    def load(file: typing.BinaryIO, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return load(io.BytesIO(data), **kwargs)

    module = types.ModuleType("lvdm_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module
