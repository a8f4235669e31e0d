"""A Pareto front on disk: one folder per front, never two fronts mixed in one folder.

A front folder holds ``pareto.csv``, ``pareto.png``, ``plans/plan_NN_<budget>.json`` and a
manifest, ``pareto-manifest.json``, that lists every file the front wrote. The manifest is
what makes replacing a front safe:

* a folder that holds an earlier front (a manifest, or front files without one) is refused,
  so two sweeps never mix their plans and stale plans never pass for new ones;
* with ``overwrite=True`` (``--overwrite``) the files the manifest lists are removed and the
  new front written; anything else in the folder is left alone, and front-like files that no
  manifest lists are refused rather than guessed at;
* the new front is written into a hidden staging folder first, so a full disk or an interrupt
  while writing leaves the folder as it was; only then are its files renamed into place, under
  a manifest that lists old and new files until the old ones are removed;
* the folder is locked (``flock``) while a front is written, so two runs writing into the same
  folder at once do one after the other, and the second sees the first's manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mpsearch.core.errors import OutputError
from mpsearch.core.io import atomic_write_text, check_output_dir, output_error

__all__ = ["MANIFEST", "check_front_dir", "write_front"]

MANIFEST = "pareto-manifest.json"
FORMAT = "mpsearch.pareto-front"
_FIX = "Pass --overwrite (overwrite=True) to replace it, or choose another --out-dir."


def _front_like(folder: Path) -> list[str]:
    """Files in ``folder`` named like a front's (relative POSIX paths, sorted)."""
    found = [name for name in ("pareto.csv", "pareto.png") if os.path.lexists(folder / name)]
    if (folder / "plans").is_dir():
        found += sorted(f"plans/{p.name}" for p in (folder / "plans").glob("plan_*.json"))
    return found


def _read_manifest(folder: Path) -> list[str] | None:
    """The files an earlier front listed, or None without a manifest; a damaged one is an OutputError."""
    path = folder / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        doc = json.loads(path.read_bytes())
        files = doc["files"] if isinstance(doc, dict) and doc.get("format") == FORMAT else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError(f"no list of files under format {FORMAT!r}")
    except (OSError, ValueError, KeyError) as err:
        raise OutputError(
            f"a front manifest must list the files of an earlier front, but {path} is unreadable ({err}). "
            "Delete the folder's old front by hand, or choose another --out-dir.", filename=str(path)) from err
    for name in files:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or name == MANIFEST:
            raise OutputError(
                f"a front manifest must list files inside its folder, but {path} lists {name!r}. "
                "Delete the folder's old front by hand, or choose another --out-dir.", filename=str(path))
    return files


def check_front_dir(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise :class:`OutputError` unless a new front may be written into ``out_dir``; writes nothing.

    The folder must be writable (or creatable), hold no earlier front unless ``overwrite``, and,
    with ``overwrite``, hold no front-like files its manifest does not list.
    """
    folder = check_output_dir(out_dir, what="a Pareto output folder")
    if not folder.is_dir():
        return folder
    listed, found = _read_manifest(folder), _front_like(folder)
    if not overwrite and (listed is not None or found):
        held = f"{len(listed)} files listed in {MANIFEST}" if listed is not None else f"{', '.join(found[:3])}"
        raise OutputError(f"a Pareto output folder must not hold an earlier front, but {folder} holds one ({held}). {_FIX}",
                          filename=str(folder))
    unlisted = sorted(set(found) - set(listed or ()))
    if unlisted:
        raise OutputError(
            f"--overwrite must only remove files a front's manifest lists, but {folder} also holds {unlisted[:5]} that no "
            f"{MANIFEST} lists. Move or delete them yourself, or choose another --out-dir.", filename=str(folder))
    return folder


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX flock on the directory itself; released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: writes are still atomic, only not serialized
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_manifest(folder: Path, files: list[str]) -> None:
    doc = {"format": FORMAT, "version": 1, "files": sorted(set(files))}
    atomic_write_text(folder / MANIFEST, json.dumps(doc, indent=1) + "\n")


def _stage(folder: Path, staging: Path, name: str, write: Callable[[Path], Any]) -> None:
    """Write one file of the front into the staging folder; a failure names the file's final path."""
    try:
        write(staging / name)
    except OutputError as err:
        cause = err.__cause__
        raise (output_error(folder / name, cause) if isinstance(cause, OSError) else err) from cause


def write_front(front: Any, out_dir: str | os.PathLike[str], *, overwrite: bool = False, x: str = "avg_bits") -> list[Path]:
    """Write a :class:`~mpsearch.solvers.pareto.ParetoFront` into ``out_dir``; returns the files written.

    The new front is written into a hidden staging folder inside ``out_dir`` first, so a full
    disk or an interrupt while writing leaves the folder as it was; then its files are renamed
    into place and the earlier front's other files removed. See the module docstring.
    """
    import shutil

    import matplotlib.pyplot as plt

    folder = check_front_dir(out_dir, overwrite=overwrite)
    plans = {f"plans/plan_{i:02d}_{r.budgets[0].value:g}.json": r.plan for i, r in enumerate(front.front)}
    writers: dict[str, Callable[[Path], Any]] = {
        "pareto.csv": lambda path: atomic_write_text(path, front.to_frame().to_csv(index=False)),
        "pareto.png": lambda path: plt.close(front.plot(path, x=x)),
        **{name: plan.save for name, plan in plans.items()},
    }
    new = list(writers)
    top = folder  # the highest missing folder on the way: removed again if this run fails
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    created = False
    try:
        if not top.exists():
            try:
                top.mkdir()
                created = True  # made by this run, not by a concurrent one
            except FileExistsError:
                pass
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            check_front_dir(folder, overwrite=overwrite)  # again: another run may have written while this one solved
            staging = Path(tempfile.mkdtemp(prefix=".pareto-staging.", dir=folder))
            try:
                for name, write in writers.items():
                    _stage(folder, staging, name, write)
                old = _read_manifest(folder) or []
                _write_manifest(folder, [*old, *new])  # lists everything until the last step
                for name in new:
                    (folder / name).parent.mkdir(exist_ok=True)
                    os.replace(staging / name, folder / name)
                for name in sorted(set(old) - set(new)):
                    path = folder / name
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                _write_manifest(folder, new)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException as exc:
        if created:  # everything in a folder this run made is this run's
            shutil.rmtree(top, ignore_errors=True)
        if isinstance(exc, OSError):
            raise output_error(folder, exc, "a Pareto output folder") from exc
        raise
    return [folder / name for name in new]
