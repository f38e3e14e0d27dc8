"""CI guard: the committed dvc.lock records the code and params committed beside it.

Results (models, metrics, grids) are committed with the dvc.lock that says which code and params
made them. When code or params change without a fresh `dvc repro` + commit of dvc.lock, a clone's
`dvc status` says its stages are stale and the committed metrics describe other code. This test
compares dvc.lock's md5 of every code dep and its params values with the working tree; it needs
no data (data deps are covered by the stage that makes them). There is deliberately no switch to
skip it: after changing code, run `dvc repro` and commit dvc.lock with the outputs.
"""

from tasks.tracking.deps import lock_problems


def test_committed_dvc_lock_matches_code_and_params():
    problems = lock_problems()
    assert not problems, "dvc.lock is stale; run `dvc repro` and commit dvc.lock with its outputs:\n" + "\n".join(
        problems
    )
