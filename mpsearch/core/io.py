"""Atomic file writes: a file is either its old self or its complete new self.

Every file mpsearch writes (plans, cost tables, caches, figures, CSV) goes
through these helpers, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


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
