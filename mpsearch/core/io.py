"""Atomic file writes, and checks that an output path can be written before any work starts.

Every file mpsearch writes (plans, cost tables, caches, figures, CSV) goes through
:func:`atomic_write_bytes`: a temporary file in the target's folder, flushed to disk and
renamed over the target, so a target is either its old self or its complete new self.

Rules for a target path, shared by the writers and the up-front checks:

* an existing target must be a regular file. A directory, device (``/dev/full``), FIFO or
  socket is refused, because the rename would replace the node with a regular file;
* a symbolic link is followed, as a plain ``open()`` would: the file it points to is
  replaced and the link stays. What it points to must obey the rule above;
* an operating-system failure (full disk, file too large, read-only file system, no
  permission, a file where a folder belongs...) becomes one :class:`OutputError` that names
  the path, the system's reason and a fix, instead of a traceback.

:func:`check_output_file` and :func:`check_output_dir` apply these rules without writing
anything that stays, so a command that computes for minutes can refuse a bad output first.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from mpsearch.core.errors import OutputError

__all__ = [
    "atomic_savefig",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "output_error",
]

_FREE = "Free some space on that disk or write to another one."
_PERMISSION = "Write into a folder you may write to, or change that folder's permissions."
_FIXES = {
    errno.ENOSPC: _FREE,
    errno.EDQUOT: _FREE,
    errno.EFBIG: "Write to a file system that takes larger files, or raise the file-size limit (ulimit -f).",
    errno.EROFS: "Write to a disk that is mounted writable.",
    errno.EACCES: _PERMISSION,
    errno.EPERM: _PERMISSION,
    errno.EISDIR: "Pass a file name, e.g. one inside that folder.",
    errno.ENAMETOOLONG: "Pass a shorter path.",
    errno.ELOOP: "Fix the symbolic links or pass another path.",
    errno.ENOENT: "Create the folder first or pass another path.",
}
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _blocker(path: Path) -> Path | None:
    """The first existing component on the way to ``path`` that is not a folder, if any."""
    for part in reversed((path, *path.parents)):
        try:
            if not stat.S_ISDIR(os.stat(part).st_mode):
                return part
        except OSError:
            return None
    return None


def output_error(path: str | os.PathLike[str], err: OSError, what: str = "an output file") -> OutputError:
    """An :class:`OutputError` for an OS failure while writing ``path``: rule, path, reason, fix."""
    if isinstance(err, OutputError):
        return err
    target = Path(path)
    code = errno.errorcode.get(err.errno or 0, "")
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _blocker(target)) is not None:
        reason = f"{blocker} is a file, not a folder"
        fix = "Remove or rename that file, or pass another path."
    else:
        fix = _FIXES.get(err.errno, "Check the path and its disk, or pass another path.")
    return OutputError(f"{what} must be writable, but writing {target} failed: {reason}{f' [{code}]' if code else ''}. {fix}",
                       errno=err.errno, filename=str(target))


def _kind(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def _target(path: str | os.PathLike[str], what: str) -> Path:
    """The file a write to ``path`` replaces: ``path``, or what its symlink points to; refuses non-regular files."""
    given = Path(path)
    try:
        is_link = stat.S_ISLNK(os.lstat(given).st_mode)
    except FileNotFoundError:
        return given
    except OSError as err:
        raise output_error(given, err, what) from err
    target = Path(os.path.realpath(given)) if is_link else given
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target  # a dangling link: the file it names is created
    except OSError as err:
        raise output_error(given, err, what) from err
    if (kind := _kind(mode)) is not None:
        via = f" (the symbolic link points to {target})" if target != given else ""
        raise OutputError(
            f"{what} must be a regular file or not exist yet, but {given} is {kind}{via}. "
            "Pass the path of a file to write; mpsearch never replaces directories or device files.",
            errno=errno.EISDIR if stat.S_ISDIR(mode) else errno.EEXIST, filename=str(given),
        )
    return target


def _probe_folder(folder: Path, shown: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``, or in its nearest existing ancestor."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        err = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        raise output_error(shown, err, what) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mpsearch-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise output_error(shown, err, what) from err


def check_output_file(path: str | os.PathLike[str], *, what: str = "an output file") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written as a regular file; returns ``path``.

    Checks, without leaving anything behind: the target (or what its symlink points to) is a
    regular file or absent, no file stands where a folder on its way belongs, and a file can be
    created in its folder (or the nearest existing ancestor, where the writer would create it).
    """
    target = _target(path, what)
    _probe_folder(target.parent, Path(path), what)
    return Path(path)


def check_output_dir(path: str | os.PathLike[str], *, what: str = "an output folder") -> Path:
    """Raise :class:`OutputError` unless ``path`` is, or can be created as, a folder one can write into."""
    folder = Path(path)
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise output_error(folder, err, what) from err
    if mode is not None and not stat.S_ISDIR(mode):
        raise OutputError(
            f"{what} must be a folder or not exist yet, but {folder} is {_kind(mode) or 'a regular file'}. "
            "Pass the path of a folder (it is created when missing).",
            errno=errno.ENOTDIR, filename=str(folder),
        )
    _probe_folder(folder, folder, what)
    return folder


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    Raises :class:`OutputError` (an ``OSError``) when the target is not a regular file or the
    system refuses the write; the old file, if any, is then unchanged and no temporary is left.
    """
    target = _target(path, "an output file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise output_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0o600); give it the mode a plain open()
        # would: the old file's, or 0o666 less the umask.
        try:
            mode = os.stat(target).st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from exc
        raise
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig, path: str | os.PathLike[str], **kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix."""
    import io

    target = Path(path)
    buffer = io.BytesIO()
    fmt = target.suffix.lstrip(".") or "png"
    fig.savefig(buffer, format=fmt, **kwargs)
    return atomic_write_bytes(target, buffer.getvalue())
