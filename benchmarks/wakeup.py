"""How long a Numba parallel call waits for its threads after the process has been idle.

Prints one JSON document: for each idle pause (a ``time.sleep`` before the call), the median
and the largest time of an empty 2-thread Numba parallel region. Threads spin for
``GOMP_SPINCOUNT`` after a call (set as in ``kernels.py``), then sleep; after a longer pause
the call must wake its worker, and on a virtual machine the worker's vCPU may first have to
be scheduled again by the host. This is what the kernel benchmark's flush absorbs before each
timed call (``kernels.py``), and what a caller of our kernels pays after idling.

    python benchmarks/wakeup.py
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # as in kernels.py (see there)

import numba
import numpy as np
from numba import njit, prange

PAUSES_MS = (0.5, 1, 2, 5, 10, 20, 50)


@njit(parallel=True, cache=False)
def _empty_region(a: np.ndarray, workers: int) -> np.ndarray:
    out = np.empty(workers, np.float32)
    for w in prange(workers):
        out[w] = a[w]
    return out


def main() -> None:
    workers = numba.get_num_threads()
    a = np.ones(workers, np.float32)
    for _ in range(5):
        _empty_region(a, workers)
    rows = []
    for pause in PAUSES_MS:
        times = []
        for _ in range(15):
            time.sleep(pause / 1e3)
            t0 = time.perf_counter()
            _empty_region(a, workers)
            times.append(time.perf_counter() - t0)
        rows.append({"pause_ms": pause, "median_us": round(statistics.median(times) * 1e6, 1),
                     "max_us": round(max(times) * 1e6, 1),
                     "calls_over_500us": sum(t > 5e-4 for t in times), "calls": len(times)})
    print(json.dumps({"format": "mpsearch.benchmark.wakeup", "version": 1,
                      "threads": workers, "numba_threading": numba.threading_layer(),
                      "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
                      "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
