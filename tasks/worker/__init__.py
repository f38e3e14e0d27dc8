"""The GPU worker's run of one revision (flows/worker.py): checkout, environment, results.

checkout.py     validation, per-URL mirrors, revision -> SHA, one isolated checkout per run, markers
environment.py  the worker's venv against the revision's requirements.lock
results.py      dvc repro / exp run, results branch or experiment push, the run's description
stages.py       the Prefect tasks (step X is `X_task`, named "X"); retries for network steps only
commands.py     git/dvc subprocesses streamed to the run log; transient vs deterministic failures
"""
