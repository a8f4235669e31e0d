"""Array code stays torch-free: solvers, cost tables, budgets and plans import without torch."""

from __future__ import annotations

import subprocess
import sys


def test_solvers_and_hardware_models_do_not_import_torch():
    code = (
        "import sys\n"
        "import mpsearch, mpsearch.solvers, mpsearch.costs, mpsearch.budget, mpsearch.plan, mpsearch.pareto\n"
        "import mpsearch.hardware_models\n"
        "from mpsearch.solvers import solve\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
