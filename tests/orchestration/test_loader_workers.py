"""DataLoader workers inside a Prefect flow: a worker that runs out of shards before the others.

A worker is a fork of the training process. Prefect 3.8 leaves a thread-exit hook in it that fails
an assert after Prefect's own fork reset, so a worker ending early (uneven shards: 9 samples in
shards of 8 and 1, two workers) exited with code 1 and torch stopped the run ("DataLoader worker
exited unexpectedly"). It broke train_ldm on 10 faces and any profile with loader workers whose
shards do not split evenly. The stage runs its loader inside a flow, so the test does too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers.e2e import REPO, _env

SCRIPT = textwrap.dedent("""
    import sys
    from prefect import flow, get_run_logger
    from tasks.shards.loader import ShardLoader
    from tasks.shards.dataset import AtomicShardWriter, write_manifest

    out = sys.argv[1]
    with AtomicShardWriter(out, "train", max_count=8) as writer:
        for i in range(9):
            writer.write({"__key__": f"k{i:02d}", "txt": str(i)})
    write_manifest(out, {"splits": {"train": writer.close()}})

    @flow
    def read_shards() -> list[int]:
        get_run_logger().info("a log record starts Prefect's log service, whose exit hook a fork inherits")
        loader = ShardLoader(out, "train", lambda s: int(s["txt"]), batch_size=2, workers=2, decode=True)
        assert loader.workers == 2 and len(loader) == 4  # 8 samples -> 4 batches; the 1-sample shard -> none
        return [int(x) for epoch in range(2) for batch in loader for x in batch]

    seen = read_shards()
    assert sorted(seen) == sorted(list(range(8)) * 2), seen
    print("read", len(seen))
""")


@pytest.mark.timeout(300)
def test_a_loader_worker_that_ends_first_does_not_stop_a_flow(tmp_path):
    env = {**_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # One Prefect server, as `make repro` runs stages (flows/local_server.py).
    proc = subprocess.run(
        [sys.executable, "-m", "flows.local_server", sys.executable, "-c", SCRIPT, str(tmp_path / "shards")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "read 16" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
