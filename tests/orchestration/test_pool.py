"""Start-up cost of the per-item worker pool and of task logging (tasks/processes/pool.py, log.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Run as a script: multiprocessing would re-run it in every spawned child, as __mp_main__.
SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
if __name__ != "__main__":
    open({marker!r}, "a").write(__name__ + "\\n")
from tasks.processes.pool import imap, process_pool
import multiprocessing as mp

if __name__ == "__main__":
    with process_pool(2) as pool:
        print(sorted(imap(pool, abs, [-3, -1, -2], 1)))
    p = mp.get_context("spawn").Process(target=os.getpid)  # a plain spawned process: unchanged
    p.start()
    p.join()
"""


def test_pool_workers_skip_the_main_module_other_processes_do_not(tmp_path):
    marker = tmp_path / "imported"
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(repo=str(REPO), marker=str(marker)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3]"
    assert marker.read_text().splitlines() == ["__mp_main__"]  # only the plain process re-ran it


def test_logger_outside_a_run_does_not_import_prefect():
    code = (
        "import sys; from tasks.reporting.log import get_logger; get_logger().info('x'); "
        "print('prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
