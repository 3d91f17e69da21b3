"""Optional dependencies: imported where they are used, with a one-sentence hint when missing.

``require("h5py", "reading a D4RL file")`` returns the module, or raises
:class:`MissingDependency` naming the extra that installs it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# which `pip install agent[extra]` brings each optional module
EXTRAS = {
    "h5py": "io",
    "pyarrow": "io",
    "fsspec": "io",
    "rliable": "bench",
    "icechunk": "bench",
    "mutmut": "bench",
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0])
        hint = f"`pip install 'agent[{extra}]'`" if extra else f"`pip install {module.split('.')[0]}`"
        raise MissingDependency(
            f"{purpose} needs the optional package {module.split('.')[0]!r}, which is not installed; "
            f"install it with {hint}.") from exc
