"""Model files shipped as pip packages, located without importing the package.

Such packages (the MiniLM encoder, the SmolLM2 GGUF file) only carry data; importing one
could pull in dependencies mpsearch does not need, so the file is found from the package's
import spec instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mpsearch.core.errors import DataError, MissingDependencyError


def packaged_file(package: str, relative: str, *, needed_by: str, install: str, reinstall: str) -> Path:
    """Path of the file ``relative`` inside the installed ``package``.

    A missing package is a :class:`MissingDependencyError` naming ``install`` (how to install
    it); a package without the file is a :class:`DataError` naming ``reinstall`` (a command).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{needed_by} needs the package {package!r}, but it is not installed. {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"the package {package!r} must contain {relative}, but {path} is missing. "
                        f"Reinstall it: `{reinstall}`.")
    return path
