"""The bad-input corpus: every entry of bad_inputs/cases.json run through the command line.

Each entry names the argv, the files to create first and the words the error must contain.
For every entry the run must exit with the expected status (2 for bad input), print exactly one
line on stderr that states a rule, the entry's words (the bad value) and a fix, print no
traceback, leave no temporary file, and change nothing in its folder (the output target
included) except the paths the entry allows. Most entries run in-process through
``mpsearch.cli.main.main``; signals, concurrent writers and process limits run as subprocesses.
See bad_inputs/README.md for the entry format.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _bad_input_files import make_file

from mpsearch.cli.main import main

HERE = Path(__file__).resolve().parent / "bad_inputs"
CASES: list[dict[str, Any]] = json.loads((HERE / "cases.json").read_text())["cases"]
RULE_WORDS = ("must", "need", "required", "expected", "invalid", "unrecognized arguments", "has no", "terminated", "interrupted")
FIX_WORDS = ("Pass", "Run", "Use", "Remove", "Write", "Free", "Raise", "Lower", "Delete", "Copy", "Reinstall", "Fix",
             "choose", "Check", "rerun", "Replace", "Regenerate", "Move", "Add", "Recompute", "Upgrade", "Create", "Give",
             "Make", "Set")
TEMP_NAMES = re.compile(r"^\..+\.tmp$|^\.mpsearch-probe\.")
CLI = [sys.executable, "-c", "import sys; from mpsearch.cli.main import main; sys.exit(main())"]


def _sysfs_refuses() -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return os.path.isdir("/sys")
    os.close(fd)
    os.unlink(probe)
    return False


SKIPS = {
    "root": (lambda: os.geteuid() == 0, "root may write into read-only folders"),
    "no_sysfs": (lambda: not _sysfs_refuses(), "needs a /sys that refuses new files"),
}


def materialize(root: Path, files: dict[str, Any]) -> None:
    for name, spec in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, dict) and "dir" in spec:
            path.mkdir()
        elif isinstance(spec, dict) and "fifo" in spec:
            os.mkfifo(path)
        elif isinstance(spec, dict) and "socket" in spec:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()
        elif isinstance(spec, dict) and "symlink" in spec:
            path.symlink_to(spec["symlink"])
        else:
            path.write_bytes(make_file(spec, HERE))
        if isinstance(spec, dict) and "mode" in spec:
            path.chmod(int(spec["mode"], 8))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: its type, and for files a hash of the bytes."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(root))
            if stat.S_ISREG(mode):
                seen[rel] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                seen[rel] = "link " + os.readlink(path)
            else:
                seen[rel] = "dir" if stat.S_ISDIR(mode) else f"node {stat.S_IFMT(mode)}"
    return seen


def run_inprocess(case: dict, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    fault = case.get("fault")
    with monkeypatch.context() as patch:
        patch.chdir(root)
        for key, value in case.get("env", {}).items():
            patch.setenv(key, value)
        if fault:
            module, name = fault["call"].rsplit(".", 1)
            code = getattr(errno, fault["errno"])

            def failing(*args, **kwargs):
                raise OSError(code, os.strerror(code))

            patch.setattr({"os": os, "tempfile": tempfile}[module], name, failing)
        capsys.readouterr()
        status = main(case["argv"])
    out, err = capsys.readouterr()
    return status, out, err


def _limit_file_size(size: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def run_subprocess(case: dict, root: Path) -> tuple[int, str, str]:
    env = {**os.environ, **case.get("env", {})}
    limit = case.get("rlimit_fsize")
    pre = _limit_file_size(limit) if limit else None
    if case.get("mode") == "signal":
        proc = subprocess.Popen([*CLI, *case["argv"]], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 240
        while not (root / case["signal_after"]).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"the command ended before {case['signal_after']} appeared: {proc.communicate()}"
        proc.send_signal(getattr(signal, case["signal"]))
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err
    done = subprocess.run([*CLI, *case["argv"]], cwd=root, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=pre)
    return done.returncode, done.stdout, done.stderr


def check_error_line(case: dict, status: int, out: str, err: str) -> None:
    assert status == case.get("status", 2), f"status {status}; stderr: {err}"
    assert "Traceback" not in err + out, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}: {err}"
    line = lines[0]
    assert line.startswith("mpsearch"), line
    assert any(w in line for w in RULE_WORDS), f"no rule in: {line}"
    assert any(w in line for w in FIX_WORDS), f"no fix in: {line}"
    for word in case["words"]:
        assert word in line, f"{word!r} missing from: {line}"


def check_folder(case: dict, root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    left = [p for p in after if TEMP_NAMES.search(Path(p).name)]
    assert not left, f"temporary files left: {left}"
    allowed = tuple(case.get("changes", ()))
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not p.startswith(allowed))
    assert not changed, f"paths changed outside the allowed ones: {changed}"
    for rel in case.get("present", ()):
        assert (root / rel).exists(), f"{rel} must exist after the run"
    for device in case.get("devices", ()):
        assert stat.S_ISCHR(os.stat(device).st_mode), f"{device} is no longer a device"


def case_marks(case: dict) -> list:
    return [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"], marks=case_marks(c)) for c in CASES
                                  if c.get("mode") != "concurrent"])
def test_bad_input(case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    if case.get("skip_if") and SKIPS[case["skip_if"]][0]():
        pytest.skip(SKIPS[case["skip_if"]][1])
    materialize(tmp_path, case.get("files", {}))
    for argv in case.get("setup", ()):
        with monkeypatch.context() as patch:
            patch.chdir(tmp_path)
            assert main(argv) == 0, argv
    before = snapshot(tmp_path)
    if case.get("mode") in ("subprocess", "signal"):
        status, out, err = run_subprocess(case, tmp_path)
    else:
        status, out, err = run_inprocess(case, tmp_path, monkeypatch, capsys)
    check_error_line(case, status, out, err)
    check_folder(case, tmp_path, before)


def check_front(folder: Path) -> None:
    """A front folder is consistent: its manifest lists exactly the front files present, one plan per CSV row."""
    listed = json.loads((folder / "pareto-manifest.json").read_text())["files"]
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "pareto-manifest.json")
    assert listed == present
    rows = (folder / "pareto.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == len([p for p in present if p.startswith("plans/")])


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"], marks=case_marks(c)) for c in CASES
                                  if c.get("mode") == "concurrent"])
def test_concurrent_writers(case: dict, tmp_path: Path) -> None:
    """Writers started together: the expected mix of statuses, and one consistent result."""
    materialize(tmp_path, case.get("files", {}))
    procs = [subprocess.Popen([*CLI, *argv], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in case["runs"]]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) == sorted(case["statuses"]), results
    for status, out, err in results:
        assert "Traceback" not in err, err
        if status == 2:
            check_error_line({**case, "status": 2}, status, out, err)
    assert not [p for p in tmp_path.rglob("*") if TEMP_NAMES.search(p.name)]
    for folder in case.get("fronts", ()):
        check_front(tmp_path / folder)
    for plan in case.get("plans", ()):
        from mpsearch.core.plan import BitPlan

        BitPlan.load(tmp_path / plan)  # complete and valid, whichever writer won


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 150
