"""The GPU worker's steps on a tiny DVC project (tests/helpers/worker_project.py): a bare git origin, a folder DVC remote.

The project has one trivial stage (cached outputs, one of them an image, a metrics file, a PNG grid
kept in git), so every git/dvc step of the worker runs for real in seconds. `make.n < 0` makes the
stage fail, `make.sleep` makes it slow (for cancellation). The end-to-end run through a Prefect deployment is in
test_worker_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from tasks.worker import checkout, environment, results
from tasks.worker.commands import CommandFailed, TransientError, run
from tests.helpers.worker_project import BIN, dvc, git, make_origin, push_commit


def worker_checkout(workdir: Path, origin: Path, revision: str, run_id: str) -> tuple[Path, str]:
    mirror, sha = checkout.fetch_revision(workdir, str(origin), revision)
    return checkout.isolated_checkout(workdir, mirror, str(origin), sha, run_id), sha


# --- validation and markers ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "   ", " x", "-uhoh", "a b", None])
def test_bad_repo_urls_are_rejected(url):
    with pytest.raises(checkout.InvalidInput):
        checkout.validate_repo_url(url)


@pytest.mark.parametrize("revision", [1234567, "", "-x", "a..b", "main.lock", "a b", "x/", None])
def test_bad_revisions_are_rejected(revision):
    with pytest.raises(checkout.InvalidInput):
        checkout.validate_revision(revision)


def test_an_all_digit_sha_parsed_as_a_number_says_how_to_quote():
    with pytest.raises(checkout.InvalidInput, match="quote it"):
        checkout.validate_revision(1234567)
    assert checkout.validate_revision("1234567") == "1234567"


def test_a_folder_without_the_marker_is_never_used_or_deleted(tmp_path):
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    (home / "project" / "keep.txt").write_text("mine")
    with pytest.raises(checkout.NotOwned):
        checkout.claim_folder(home)
    with pytest.raises(checkout.NotOwned):
        checkout.remove_owned(home / "project")
    with pytest.raises(checkout.NotOwned):  # an empty URL must not make workdir the checkout
        checkout.fetch_revision(home, "/nonexistent/repo.git", "main")
    assert (home / "project" / "keep.txt").read_text() == "mine"
    assert not (home / checkout.MARKER).exists()


def test_marked_folders_are_reused_and_deleted(tmp_path):
    work = checkout.claim_folder(tmp_path / "w")
    assert checkout.claim_folder(work) == work  # a second claim of its own folder is fine
    (work / "runs" / "r1").mkdir(parents=True)
    (work / "runs" / "r1" / checkout.MARKER).write_text("")
    checkout.remove_owned(work / "runs" / "r1")
    assert not (work / "runs" / "r1").exists()


def test_runs_claiming_one_new_folder_at_once_all_succeed(tmp_path):
    for attempt in range(20):  # the race was: one run saw the folder, then the other's marker in it
        work, errors = tmp_path / f"w{attempt}", []

        def claim():
            try:
                checkout.claim_folder(work)
                (work / "mirrors").mkdir(exist_ok=True)
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(checkout.NotOwned):
        checkout.claim_folder(tmp_path / "a-file")


# --- revisions, mirrors, isolation ----------------------------------------------------------------


def test_main_is_resolved_again_after_a_new_commit_is_pushed(tmp_path):
    origin, _ = make_origin(tmp_path)
    _, first = checkout.fetch_revision(tmp_path / "w", str(origin), "main")
    assert first == git(origin, "rev-parse", "main")
    second = push_commit(origin, "newer", n=5)
    _, resolved = checkout.fetch_revision(tmp_path / "w", str(origin), "main")
    assert resolved == second != first
    _, short = checkout.fetch_revision(tmp_path / "w", str(origin), first[:7])  # a short SHA works too
    assert short == first


def test_a_missing_revision_fails_as_not_found_not_as_a_network_error(tmp_path):
    origin, _ = make_origin(tmp_path)
    with pytest.raises(checkout.RevisionNotFound, match="nope"):
        checkout.fetch_revision(tmp_path / "w", str(origin), "nope")


def test_network_failures_are_transient_and_others_are_not(tmp_path):
    with pytest.raises(TransientError):
        run(["sh", "-c", "echo 'fatal: unable to access x: Could not resolve host: git.example' >&2; exit 128"])
    with pytest.raises(CommandFailed) as err:
        run(["sh", "-c", "echo 'ERROR: failed to reproduce stage' >&2; exit 1"])
    assert not isinstance(err.value, TransientError) and "failed to reproduce" in str(err.value)


def test_two_repos_with_one_name_never_share_a_mirror(tmp_path):
    a, _ = make_origin(tmp_path / "a", n=1)
    b, _ = make_origin(tmp_path / "b", n=2)
    assert a.name == b.name
    mirror_a, sha_a = checkout.fetch_revision(tmp_path / "w", str(a), "main")
    mirror_b, sha_b = checkout.fetch_revision(tmp_path / "w", str(b), "main")
    assert mirror_a != mirror_b and sha_a == git(a, "rev-parse", "main") and sha_b == git(b, "rev-parse", "main")


def test_concurrent_runs_get_their_own_checkouts(tmp_path):
    origin, _ = make_origin(tmp_path)
    work = tmp_path / "w"
    outcomes = {}

    def one(run_id, n):
        repo, _ = worker_checkout(work, origin, "main", run_id)
        (repo / "params.yaml").write_text(f"make:\n  n: {n}\n")  # what a profile does
        outcomes[run_id] = repo

    threads = [threading.Thread(target=one, args=(f"run{i}", 10 + i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({str(p) for p in outcomes.values()}) == 3
    for i in range(3):  # nobody reset anybody's params
        assert outcomes[f"run{i}"].joinpath("params.yaml").read_text() == f"make:\n  n: {10 + i}\n"


# --- environment -----------------------------------------------------------------------------------


def test_the_lock_check_names_every_mismatch_and_accepts_a_cuda_build(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\ntorch==2.13.0\nPyYAML==6.0\nmissing-pkg==1.0\n--index-url x\n")
    pins = environment.read_lock(lock)
    assert pins == {"torch": "2.13.0", "pyyaml": "6.0", "missing-pkg": "1.0"}
    installed = {"torch": "2.13.0+cu128", "pyyaml": "6.0.2"}.get
    assert environment.mismatches(pins, installed) == [
        "missing-pkg: locked 1.0, not installed",
        "pyyaml: locked 6.0, installed 6.0.2",
    ]
    with pytest.raises(environment.EnvironmentMismatch, match="missing-pkg"):
        environment.check_lock(tmp_path)


# --- results -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_plain_run_returns_its_results_on_a_branch_the_user_can_pull(tmp_path):
    origin, storage = make_origin(tmp_path)
    repo, sha = worker_checkout(tmp_path / "w", origin, "main", "run-plain")
    assert environment.check_lock(repo) == 1
    assert results.reproduce(repo, [], [], None) == ["make"]
    record = results.describe(repo, results.RunRecord(str(origin), "main", sha, "run-plain", stages_run=["make"]))
    assert record.metrics == {"metrics/make.json": {"size": 3, "nested": {"half": 1.5}}}
    assert record.grids == ["data/preview.png", "eval/grids/grid.png"]  # git-ignored or not
    branch, _ = results.commit_results(repo, sha, "run-plain", record.stages_run)
    assert results.push_data(repo) and any(storage.rglob("*"))
    results.push_branch(repo, branch)

    user = tmp_path / "user"
    subprocess.run(["git", "clone", "-q", str(origin), str(user)], check=True)
    git(user, "fetch", "-q", "origin", branch)
    git(user, "checkout", "-q", "FETCH_HEAD")
    dvc(user, "pull")
    assert (user / "data/out.txt").read_text() == "xxx"
    assert json.loads((user / "metrics/make.json").read_text())["size"] == 3
    assert (user / "eval/grids/grid.png").is_file()
    assert "didn't change" in dvc(user, "repro")  # dvc.lock came back with the branch


@pytest.mark.slow
def test_an_experiment_run_is_pushed_and_pulled_with_dvc_exp(tmp_path):
    origin, _ = make_origin(tmp_path)
    repo, sha = worker_checkout(tmp_path / "w", origin, "main", "run-exp")
    assert results.reproduce(repo, ["make"], ["make.n=7"], "exp-seven") == ["make"]
    record = results.describe(
        repo, results.RunRecord(str(origin), "main", sha, "run-exp", experiment="exp-seven", stages_run=["make"])
    )
    assert record.params_changed["params.yaml"]["make.n"]["new"] == 7
    assert record.metrics_diff["metrics/make.json"]["size"]["new"] == 7  # nothing committed at the base
    results.push_experiment(repo, "exp-seven")

    user = tmp_path / "user"
    subprocess.run(["git", "clone", "-q", str(origin), str(user)], check=True)
    assert "exp-seven" in dvc(user, "exp", "list", "origin")
    dvc(user, "exp", "pull", "origin", "exp-seven")
    shown = json.loads(dvc(user, "exp", "show", "--json"))
    exps = [e for base in shown for e in (base.get("experiments") or [])]
    data = [r["data"] for e in exps for r in e.get("revs", []) if r.get("name") == "exp-seven"]
    assert data and data[0]["metrics"]["metrics/make.json"]["data"]["size"] == 7
    dvc(user, "exp", "apply", "exp-seven")
    dvc(user, "pull")
    assert (user / "data/out.txt").read_text() == "x" * 7


def test_set_params_need_an_experiment(tmp_path):
    with pytest.raises(ValueError, match="experiment run"):
        results.reproduce(tmp_path, [], ["a.b=1"], None)


def test_the_artifact_describes_this_run():
    record = results.RunRecord(
        "git@x:p.git",
        "main",
        "a" * 40,
        "run-1",
        experiment="exp-1",
        stages_run=["make"],
        params_changed={"params.yaml": {"make.n": {"old": 3, "new": 7}}},
        metrics={"metrics/make.json": {"size": 7, "nested": {"half": 3.5}, "same": 1.0}},
        metrics_diff={
            "metrics/make.json": {"size": {"old": 3, "new": 7, "diff": 4}, "same": {"old": 1.0, "new": 1.0, "diff": 0}}
        },
        grids=["eval/grids/grid.png"],
        missing_outputs=["data/out.txt"],
        pushed_data=True,
    )
    md = results.markdown(record)
    for expected in [
        "`" + "a" * 40 + "`",
        "experiment `exp-1`",
        "`make`",
        "| params.yaml | make.n | 3 | 7 |",
        "| metrics/make.json | size | 7 | 3 | +4 |",
        "| metrics/make.json | same | 1 | 1 | 0 |",
        "| metrics/make.json | nested.half | 3.5 | absent | new |",  # unchanged and missing differ
        "- `eval/grids/grid.png`",
        "data pushed",
        "## Outputs missing from the DVC remote",
        "- `data/out.txt`",
    ]:
        assert expected in md, expected
    record.failure = "stage make failed: ValueError: make.n must be >= 0, got -1"
    assert f"- **failed**: {record.failure}" in results.markdown(record)


def test_the_run_carries_its_scorecard_into_the_artifacts(tmp_path, monkeypatch):
    import flows.worker as worker
    from tests.helpers.scorecard_metrics import make_root

    card = results.scorecard_of(make_root(tmp_path, train_vae={"psnr_gain_over_bilinear_db": 1.0}))
    record = results.RunRecord("git@x:p.git", "main", "a" * 40, "run-1", stages_run=["train_vae"], scorecard=card)
    assert "## Scorecard" in results.markdown(record)
    assert "**1 of 8 targets missed: train_vae psnr_gain_over_bilinear_db +1.00 < +3 dB**" in results.markdown(record)
    made = {}
    monkeypatch.setattr(
        worker,
        "create_markdown_artifact",
        lambda markdown, key, description: made.__setitem__(key, (markdown, description)),
    )
    monkeypatch.setattr(
        worker,
        "Artifact",
        lambda **kw: type("A", (), {"create": lambda self: made.__setitem__(kw["key"], kw["data"])})(),
    )
    worker.publish(record)
    markdown, description = made["facediff-scorecard"]
    assert markdown.startswith("# Scorecard") and description.startswith("aaaaaaaaaaaa: 1 of 8 targets missed")
    assert made["facediff-worker-record"]["scorecard"] == card  # what flows.submit prints

    def broken(repo):
        raise RuntimeError("boom")

    monkeypatch.setattr(results.scorecard, "build", broken)  # a broken card never fails a finished run
    assert results.scorecard_of(tmp_path) == {"rows": [], "note": "", "error": "RuntimeError: boom"}


def test_stage_processes_get_the_worker_run_id_but_not_prefects_own(monkeypatch):
    """A process work pool sets PREFECT__FLOW_RUN_ID; a stage flow seeing it would pose as the worker run."""
    from tasks.worker.commands import WORKER_RUN_ENV, child_env

    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b6f3c2e-0000-4000-8000-000000000001")
    env = child_env()
    assert env[WORKER_RUN_ENV] == "0b6f3c2e-0000-4000-8000-000000000001"
    assert not any(k.startswith("PREFECT__") for k in env)
    assert env["PATH"].split(":")[0] == str(BIN)


def test_only_transient_failures_are_retried():
    from prefect.states import Failed

    from tasks.worker.commands import retry_if_transient

    class Task:
        name = "pull"

    transient = TransientError(["dvc", "pull"], 1, "ERROR: Could not resolve host: storage.example")
    assert retry_if_transient(Task, None, Failed(data=transient)) is True
    assert retry_if_transient(Task, None, Failed(data=checkout.RevisionNotFound("nope"))) is False
    assert retry_if_transient(Task, None, Failed(data=CommandFailed(["dvc", "repro"], 1, "stage failed"))) is False


def test_the_deployment_parameter_revision_is_a_string():
    """`-p revision=1234567` arrives as a number: Prefect's typed parameter refuses it before the run starts."""
    from prefect.exceptions import ParameterTypeError

    from flows.worker import repro_on_worker

    with pytest.raises(ParameterTypeError, match="revision"):
        repro_on_worker.validate_parameters({"repo_url": "x", "revision": 1234567, "workdir": "w"})
    assert (
        repro_on_worker.validate_parameters({"repo_url": "x", "revision": "1234567", "workdir": "w"})["revision"]
        == "1234567"
    )
