"""Tests for atomic writes (mpsearch/core/io.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.core.errors import OutputError
from mpsearch.core.io import atomic_savefig, atomic_write_bytes, atomic_write_text, check_output_dir, check_output_file


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_creates_parents_and_returns_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()


def test_write_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old and much longer content\n")
    atomic_write_text(str(target), "new")
    assert target.read_text() == "new"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert names(tmp_path) == ["plan.json"]


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old")

    def boom(src, dst):
        assert Path(src).exists()  # the temporary file was written completely
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert names(tmp_path) == ["plan.json"]


def test_failed_write_of_new_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert names(tmp_path) == []


def test_failed_fsync_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "costs.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert names(tmp_path) == ["costs.json"]


def test_atomic_savefig_follows_suffix(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_savefig(fig, tmp_path / "f.png")
    atomic_savefig(fig, tmp_path / "f.svg")
    atomic_savefig(fig, tmp_path / "noext")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "f.svg").read_text()
    assert (tmp_path / "noext").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # PNG when there is no suffix
    assert names(tmp_path) == ["f.png", "f.svg", "noext"]


def test_written_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "plan.json", "{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


# ---- the target rule and OS failures as OutputError ----

def test_device_fifo_and_directory_targets_are_refused_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    for target, kind in ((fifo, "FIFO"), (tmp_path / "folder", "directory"), (Path(os.devnull), "character device")):
        with pytest.raises(OutputError, match=f"must be a regular file or not exist yet, but .* is a {kind}"):
            atomic_write_text(target, "x")
        with pytest.raises(OutputError, match=kind):
            check_output_file(target)
    assert fifo.is_fifo() and (tmp_path / "folder").is_dir() and Path(os.devnull).is_char_device()
    assert names(tmp_path) == ["folder", "pipe"]


def test_symlink_is_followed_to_a_regular_file_and_refused_to_a_device(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dev = tmp_path / "dev.json"
    dev.symlink_to(os.devnull)
    with pytest.raises(OutputError, match="the symbolic link points to"):
        atomic_write_text(dev, "x")
    assert dev.is_symlink() and Path(os.devnull).is_char_device()


def test_a_file_in_place_of_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "costs").write_text("a file")
    for call in (lambda p: atomic_write_text(p, "x"), check_output_file, check_output_dir):
        with pytest.raises(OutputError, match=r"costs is a file, not a folder \[ENOTDIR\]\. Remove or rename") as info:
            call(tmp_path / "costs" / "sub" / "plan.json")
        assert info.value.errno == errno.ENOTDIR and isinstance(info.value, OSError)
    assert names(tmp_path) == ["costs"]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device \\[ENOSPC\\]. Free some space"),
                                         (errno.EFBIG, "File too large \\[EFBIG\\]. Write to a file system"),
                                         (errno.EROFS, "Read-only file system \\[EROFS\\]. Write to a disk"),
                                         (errno.EACCES, "Permission denied \\[EACCES\\]. Write into a folder")])
def test_os_failures_become_output_errors_and_keep_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 code: int, words: str) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old")

    def failing(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OutputError, match=f"an output file must be writable, but writing {target} failed: {words}"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert names(tmp_path) == ["plan.json"]


def test_file_size_limit_gives_efbig_for_real(tmp_path: Path) -> None:
    """A process-wide file-size limit makes the kernel refuse the write (Python ignores SIGXFSZ)."""
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from mpsearch.core.io import atomic_write_bytes\n"
        "from mpsearch.core.errors import OutputError\n"
        "try:\n    atomic_write_bytes(sys.argv[1], bytes(5000))\n"
        "except OutputError as err:\n    print(err)\n"
    )
    target = tmp_path / "big.bin"
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60)
    assert "File too large [EFBIG]" in done.stdout, done.stderr
    assert names(tmp_path) == []


def test_probe_refuses_unwritable_folder_without_leaving_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match="Permission denied"):
        check_output_file(tmp_path / "new" / "plan.json")
    with pytest.raises(OutputError, match="an output folder must be writable"):
        check_output_dir(tmp_path / "out")
    assert names(tmp_path) == []


def test_probes_accept_writable_paths_and_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("keep")
    assert check_output_file(tmp_path / "old.json") == tmp_path / "old.json"
    assert check_output_file(tmp_path / "a" / "b" / "new.json") == tmp_path / "a" / "b" / "new.json"
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "x" / "y") == tmp_path / "x" / "y"
    assert names(tmp_path) == ["old.json"] and (tmp_path / "old.json").read_text() == "keep"


def test_check_output_dir_refuses_files_and_devices(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="must be a folder or not exist yet, but .*f is a regular file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="is a character device"):
        check_output_dir(os.devnull)
