"""Two worker processes build one Optuna study and one front, on SQLite and on a real PostgreSQL.

The PostgreSQL test starts its own server (initdb into a temporary folder, pg_ctl on a
free loopback port, createdb) and stops it in a finalizer. It skips only where no server
binary is installed (initdb / pg_ctl on PATH or under /usr/lib/postgresql/*/bin) or the
psycopg2 driver is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from mpsearch.solvers.search import load_front

N_TRIALS = 12

WORKER = textwrap.dedent(
    """
    import sys
    from mpsearch.solvers import NSGA2Solver
    from mpsearch.testing.solvers import contract_table
    costs = contract_table(4)
    NSGA2Solver(n_trials={n}, population_size=6, seed=int(sys.argv[2]), storage=sys.argv[1],
                study_name="shared").front(costs)
    """
).format(n=N_TRIALS)


def run_two_workers(storage: str) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, storage, str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (0, 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def check_one_study(storage: str) -> None:
    import optuna

    from mpsearch.testing.solvers import contract_table

    costs = contract_table(4)
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 2 * N_TRIALS
    assert len(optuna.get_all_study_names(storage)) == 1
    front = load_front(costs, storage, "shared")
    assert len(front.front) >= 2 and front.to_frame()["predicted_cost"].is_monotonic_decreasing


def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_two_workers(storage)
    check_one_study(storage)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url(request):
    initdb, pg_ctl, createdb = (_pg_bin(n) for n in ("initdb", "pg_ctl", "createdb"))
    if not (initdb and pg_ctl and createdb):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, createdb) on this machine")
    pytest.importorskip("psycopg2", reason="the psycopg2 driver is needed to talk to PostgreSQL")
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="mpsearch-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr[-2000:]}"

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    request.addfinalizer(stop)
    run(pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    run(createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mpsearch")
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mpsearch"


def test_two_processes_share_one_postgres_study(postgres_url: str) -> None:
    run_two_workers(postgres_url)
    check_one_study(postgres_url)
