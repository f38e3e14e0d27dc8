"""Prefect's cost per DVC stage: a no-op stage process with and without its flow around it.

    python -m benchmarks.bench_prefect_overhead [--runs 3]

Each DVC stage is its own process, so what matters is process wall time. Three ways are timed:
the bare function (no Prefect), the flow with no server configured (a temporary server per
process, what plain `dvc repro` does), and the flow against one shared server (what
`make repro` does through flows.local_server).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from flows.local_server import _free_port, _wait_healthy

NOOP = """
import flows  # its Prefect settings, as every stage has them
import sys
from prefect import flow, task
@task
def work(x): return x + 1
@flow(name="noop")
def noop(): return work(1)
if sys.argv[1] == "bare":
    work.fn(1)
else:
    noop()
"""


def time_runs(mode: str, runs: int, env: dict) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", NOOP, mode], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        bare = time_runs("bare", args.runs, env)
        time_runs("flow", 1, env)  # first run creates the database
        ephemeral = time_runs("flow", args.runs, env)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        start = time.perf_counter()
        server = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_healthy(url, server)
            startup = time.perf_counter() - start
            shared = time_runs("flow", args.runs, {**env, "PREFECT_API_URL": url})
        finally:
            server.terminate()
            server.wait()
    print(f"bare stage process (import prefect, no flow)  {bare:6.2f} s")
    print(f"flow, temporary server per process           {ephemeral:6.2f} s  (+{ephemeral - bare:.2f} s per stage)")
    print(f"flow, one shared server                      {shared:6.2f} s  (+{shared - bare:.2f} s per stage)")
    print(f"shared server start-up, once per run          {startup:6.2f} s")


if __name__ == "__main__":
    main()
