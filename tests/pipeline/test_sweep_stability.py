"""benchmarks/sweep_stability.py's bookkeeping, without training: a fake runner stands in for a stage,
and the child process (`python -m benchmarks.sweep_stability --one ...`) runs in this process
through the same `main(["--work", ..., "--one", stage, seed, threads])` a real child runs."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
import sys
import traceback
import types

import pytest

from benchmarks import sweep_stability as sweep

FAILING_SEED = 13


def fake_runner(params: dict, work) -> dict:
    seed = params["training"]["seed"]
    if seed == FAILING_SEED:
        raise RuntimeError("diverged at step 7")
    (work / "model.txt").write_text("trained")  # outputs go under the run's own folder
    return {
        "headline": "figure",
        "value": 0.5 + seed / 10,
        "target": ">= 0.6",
        "met": seed >= 1,
        "recoveries": seed % 2,
    }


@pytest.fixture
def sweep_env(monkeypatch, tmp_path):
    """The fake runner as train_ldm, an in-process child, a fixed recipe; returns a state namespace."""
    state = types.SimpleNamespace(
        recipe="recipe-1", threads=[], children=[], results=tmp_path / "stability.jsonl", work=tmp_path / "work"
    )
    monkeypatch.chdir(sweep.REPO)  # stage_params reads params.yaml from the working directory
    monkeypatch.setitem(sweep.RUNNERS, "train_ldm", fake_runner)
    monkeypatch.setattr(sweep, "recipe_identity", lambda stage: state.recipe)
    # one_run sets torch's thread count: record it instead of importing torch and changing this process's
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_num_threads=state.threads.append))

    def child(cmd, cwd, env, capture_output, text):
        """What the child process does, here: main(its argv), stdout and stderr captured, and on an
        exception exit status 1 with the traceback last on stderr, as the interpreter does."""
        argv = cmd[cmd.index("benchmarks.sweep_stability") + 1 :]
        state.children.append((argv, env["OMP_NUM_THREADS"]))
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                sweep.main(argv)
        except Exception:
            return subprocess.CompletedProcess(cmd, 1, out.getvalue(), err.getvalue() + traceback.format_exc())
        return subprocess.CompletedProcess(cmd, 0, out.getvalue(), err.getvalue())

    monkeypatch.setattr(sweep, "subprocess", types.SimpleNamespace(run=child))
    return state


def run_sweep(state, seeds: str, threads: str = "1,2") -> None:
    sweep.main(
        [
            "--stages",
            "train_ldm",
            "--seeds",
            seeds,
            "--threads",
            threads,
            "--work",
            str(state.work),
            "--results",
            str(state.results),
        ]
    )


def rows(state) -> list[dict]:
    return [json.loads(line) for line in state.results.read_text().splitlines()]


def test_one_row_per_stage_seed_and_thread_count(sweep_env):
    run_sweep(sweep_env, "0-2")
    got = rows(sweep_env)
    assert [(r["stage"], r["seed"], r["threads"]) for r in got] == [
        ("train_ldm", s, t) for s, t in itertools.product([0, 1, 2], [1, 2])
    ]
    assert all(r["recipe"] == "recipe-1" and r["headline"] == "figure" for r in got)
    assert [r["value"] for r in got] == pytest.approx([0.5, 0.5, 0.6, 0.6, 0.7, 0.7])
    assert [r["met"] for r in got] == [False, False, True, True, True, True]
    assert all(isinstance(r["minutes"], float) for r in got)
    # each child: its own work folder, OMP_NUM_THREADS and torch threads set to the run's count
    assert [omp for _, omp in sweep_env.children] == ["1", "2"] * 3
    assert sweep_env.threads == [1, 2] * 3
    assert (sweep_env.work / "train_ldm-2-1" / "model.txt").is_file()


def test_done_runs_are_skipped_and_a_changed_recipe_runs_afresh(sweep_env):
    run_sweep(sweep_env, "0", threads="1")
    run_sweep(sweep_env, "0-1")  # (0, 1) is done: three new runs
    assert len(sweep_env.children) == 4
    assert [(r["seed"], r["threads"]) for r in rows(sweep_env)] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    run_sweep(sweep_env, "0-1")  # all done for this recipe: nothing runs
    assert len(sweep_env.children) == 4 and len(rows(sweep_env)) == 4

    sweep_env.recipe = "recipe-2"  # the stage's code or params changed
    run_sweep(sweep_env, "0-1")
    assert len(sweep_env.children) == 8
    got = rows(sweep_env)
    assert [r["recipe"] for r in got] == ["recipe-1"] * 4 + ["recipe-2"] * 4
    assert {(r["seed"], r["threads"]) for r in got[4:]} == {(0, 1), (0, 2), (1, 1), (1, 2)}


def test_a_failing_run_is_a_row_with_its_error(sweep_env):
    run_sweep(sweep_env, f"0,{FAILING_SEED}", threads="1")
    ok, failed = rows(sweep_env)
    assert ok["met"] is False and ok["value"] == pytest.approx(0.5) and "error" not in ok
    assert failed == {
        "stage": "train_ldm",
        "seed": FAILING_SEED,
        "threads": 1,
        "met": False,
        "error": "RuntimeError: diverged at step 7",
        "recipe": "recipe-1",
    }
    run_sweep(sweep_env, f"0,{FAILING_SEED}", threads="1")  # a failed run counts as done for its recipe
    assert len(sweep_env.children) == 2


def test_table_prints_the_rows_and_a_summary_per_stage(sweep_env, capsys):
    run_sweep(sweep_env, f"0-1,{FAILING_SEED}", threads="1")
    capsys.readouterr()
    sweep.main(["--table", "--results", str(sweep_env.results)])
    out = capsys.readouterr().out
    assert "| train_ldm | 0 | 1 | figure | 0.5 | >= 0.6 | **no** | 0 |" in out
    assert "| train_ldm | 1 | 1 | figure | 0.6 | >= 0.6 | yes | 1 |" in out
    assert f"| train_ldm | {FAILING_SEED} | 1 |  | error |  | **no** |  |" in out
    assert "train_ldm: 1 of 3 runs at target; headline 0.5 to 0.6; recoveries 1" in out


def test_each_stage_has_a_runner_and_its_seed_where_its_params_keep_it(monkeypatch, tmp_path):
    monkeypatch.chdir(sweep.REPO)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_num_threads=lambda n: None))
    from tasks.config.params import stage_params

    assert set(sweep.RUNNERS) == set(sweep.DEFAULT_GRID)
    for stage in sweep.DEFAULT_GRID:
        path = sweep.SEED_PATHS.get(stage, ("training", "seed"))
        section = stage_params(stage)
        for key in path:  # the seed replaces a key params.yaml has: no stage config rejects an unknown one
            assert key in section, f"{stage}: no {'.'.join(path)} in its params section"
            section = section[key]
        seen: dict = {}

        def record(params, work, seen=seen):
            seen.update(params)
            return {"value": 0}

        monkeypatch.setitem(sweep.RUNNERS, stage, record)
        sweep.one_run(stage, 7, 1, tmp_path / stage)
        expected = stage_params(stage)
        sweep.set_seed(expected, path, 7)
        assert seen == expected  # the seed changed, nothing else
        if path != ("training", "seed"):
            assert "training" not in seen  # e.g. the classifier: its seed at the top of its section
    assert sweep.SEED_PATHS["train_attribute_classifier"] == ("seed",)


def test_measured_stages_rerun_when_their_evaluation_params_change(monkeypatch):
    monkeypatch.chdir(sweep.REPO)
    import tasks.config.params as P

    before = {stage: sweep.recipe_identity(stage) for stage in sweep.DEFAULT_GRID}
    real = P.stage_params

    def changed(stage, *a, **kw):
        section = real(stage, *a, **kw)
        return {**section, "num_samples": section["num_samples"] + 1} if stage == "evaluate_faces" else section

    monkeypatch.setattr(P, "stage_params", changed)
    after = {stage: sweep.recipe_identity(stage) for stage in sweep.DEFAULT_GRID}
    assert {s for s in before if before[s] != after[s]} == {"train_ldm", "train_dreambooth"}
