"""Optional heavy dependencies: the one helper that imports them.

torch, opacus, tenseal, pyspark, safetensors, SQLAlchemy... are extras. A module that
needs one calls :func:`require` where it needs it; a missing extra becomes a
:class:`~privdl.errors.MissingDependencyError` naming the ``pip install`` to run,
never a bare ``ModuleNotFoundError`` from deep inside a call.
"""

from __future__ import annotations

import importlib
from typing import Any

from privdl.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, extra: str) -> Any:
    """Import ``module``, or raise an error naming the extra that installs it.

    Args:
        module: the dotted module name (``"torch"``, ``"pyspark.sql"``).
        extra: the privdl extra that brings it (``"train"``, ``"he"``, ``"spark"``).

    Raises:
        MissingDependencyError: the module cannot be imported; the message says
            ``pip install "privdl[<extra>]"``.

    Example:
        >>> json = require("json", "dev")
        >>> json.dumps([1])
        '[1]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed: run `pip install 'privdl[{extra}]'`"
        ) from exc
