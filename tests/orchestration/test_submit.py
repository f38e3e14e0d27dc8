"""flows.submit's parts without a Prefect server: its parameters, the refusals and their fixes, the
stage progress and failure lines read from the worker's log, the log cursor. The whole round trip
(server, worker, bare origin, DVC remote) is in test_worker_e2e.py.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import pytest

from flows.submit import parameters, parse_args
from tasks.worker import follow, local
from tasks.worker.results import ReproFailed, one_line, repro_failure
from tests.helpers.worker_project import GIT, git

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


# --- the flow run's parameters -----------------------------------------------------------------------


def test_only_what_was_asked_is_sent_and_set_params_make_an_experiment():
    sha = "0123456" + "0" * 33  # all digits: a string here, never a number
    assert parameters(parse_args([]), sha) == {"revision": sha}  # the deployment's defaults hold
    assert parameters(parse_args(["evaluate_cartoon", "--profile", "configs/cartoon_seed.yaml"]), sha) == {
        "revision": sha,
        "targets": ["evaluate_cartoon"],
        "profile": "configs/cartoon_seed.yaml",
    }
    assert parameters(parse_args(["-S", "train_cartoon.lr=2e-4", "-S", "a.b=1", "train_cartoon"]), sha) == {
        "revision": sha,
        "targets": ["train_cartoon"],
        "set_params": ["train_cartoon.lr=2e-4", "a.b=1"],
        "experiment": True,
    }
    assert parameters(parse_args(["--experiment"]), sha)["experiment"] is True


@pytest.mark.parametrize("bad", ["lr", "=2"])
def test_an_override_that_is_not_key_value_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(["-S", bad])
    assert "is not key=value" in capsys.readouterr().err


# --- refusals, each with its fix ----------------------------------------------------------------------


@pytest.fixture
def user(tmp_path):
    """A clone of a bare origin with one pushed commit on main (git only: fast)."""
    origin, user = tmp_path / "origin.git", tmp_path / "user"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(user)], check=True, capture_output=True)
    (user / "params.yaml").write_text("make:\n  n: 1\n")
    git(user, "add", "-A")
    git(user, "commit", "-qm", "one")
    git(user, "push", "-q", "origin", "main")
    return user


def test_a_dirty_tree_is_refused_with_the_commands_that_fix_it(user):
    local.check_clean(user)
    (user / "params.yaml").write_text("make:\n  n: 2\n")
    (user / "new.py").write_text("")
    with pytest.raises(local.Refused, match="params.yaml, new.py") as err:
        local.check_clean(user)
    assert "git add -A && git commit" in str(err.value) and "git stash --include-untracked" in str(err.value)


def test_submit_refuses_a_dirty_tree_before_anything_is_sent(user, monkeypatch, capsys):
    """`python -m flows.submit` itself runs the check (not only local.check_clean): in a dirty checkout it
    exits with the refusal and its fixes, before a deployment is looked up or a flow run started."""
    import flows.submit as submit

    def sent(*args, **kwargs):
        raise AssertionError("flows.submit went past a dirty working tree")

    monkeypatch.setattr(submit, "check_deployment", sent)
    monkeypatch.setattr(submit.follow, "start", sent)
    monkeypatch.chdir(user)
    assert submit.check_commit(user, parse_args([])) == local.head_commit(user)  # clean and pushed: sendable
    (user / "params.yaml").write_text("make:\n  n: 2\n")
    with pytest.raises(local.Refused, match=r"uncommitted changes \(params.yaml\)"):
        submit.check_commit(user, parse_args([]))
    assert submit.main(["-S", "make.n=2"]) == submit.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "flows.submit: uncommitted changes (params.yaml)" in err and "git stash --include-untracked" in err


def test_a_commit_the_remote_lacks_is_refused_with_the_push_that_fixes_it(user):
    sha = local.head_commit(user)
    local.check_pushed(user, "origin", sha)  # the remote's tip
    subprocess.run([*GIT, "commit", "-q", "--allow-empty", "-m", "two"], cwd=user, check=True)
    with pytest.raises(local.Refused, match=r"is not on origin .*\n  git push origin main"):
        local.check_pushed(user, "origin", local.head_commit(user))
    git(user, "push", "-q", "origin", "main")
    local.check_pushed(user, "origin", sha)  # now behind the tip: reachable, so fine
    git(user, "checkout", "-q", "--detach")
    subprocess.run([*GIT, "commit", "-q", "--allow-empty", "-m", "three"], cwd=user, check=True)
    with pytest.raises(local.Refused, match="git switch -c <new branch>"):
        local.check_pushed(user, "origin", local.head_commit(user))


def test_a_profile_must_be_in_the_commit(user):
    with pytest.raises(local.Refused, match="configs/x.yaml is not in commit"):
        local.check_in_commit(user, local.head_commit(user), "configs/x.yaml")
    local.check_in_commit(user, local.head_commit(user), "params.yaml")


# --- bringing the results home -------------------------------------------------------------------------


def test_the_runs_scorecard_is_printed_when_its_results_come_home(tmp_path, monkeypatch, capsys):
    from flows.submit import bring_home
    from tasks.reporting import scorecard
    from tests.helpers.scorecard_metrics import make_root

    monkeypatch.setattr(local, "pull_results_branch", lambda *args, **kwargs: None)
    monkeypatch.setattr(local, "metrics_diff", lambda *args, **kwargs: "")
    sent = scorecard.build(make_root(tmp_path / "worker", train_cartoon=None)).to_dict()  # the worker's card
    record = {"results_branch": "results/abc-run", "pushed_data": True, "grids": [], "scorecard": sent}
    here = make_root(tmp_path / "user")  # every target met here: the card printed must be the worker's
    assert bring_home(here, "origin", "a" * 40, record) == 0  # a missed target is no failed run
    out = capsys.readouterr().out
    assert "==> VERDICT: 1 of 8 targets missed: train_cartoon: metrics/train_cartoon.json not found" in out
    assert "!![NO FILE]   train_cartoon" in out
    del record["scorecard"]  # a worker too old to send one: the results branch's own card
    assert bring_home(here, "origin", "a" * 40, record) == 0
    assert "==> verdict: all 8 targets met" in capsys.readouterr().out


# --- reading the worker's log and state ---------------------------------------------------------------


def test_one_progress_line_per_stage_from_dvcs_lines():
    said = []
    progress = follow.StageProgress(said.append)
    for i, message in enumerate(
        [
            "  Stage 'fetch' didn't change, skipping",
            "  Running stage 'prep':",
            "  > python -m flows.prep",
            "  Running stage 'train':",
            "stages run: prep, train",
        ]
    ):
        progress.feed(message, T0 + timedelta(seconds=10 * i))
    assert said == [
        "==> stage fetch: up to date, not run",
        "==> stage prep: running (stage 1 of this run)",
        "==> stage prep: done after 20 s",
        "==> stage train: running (stage 2 of this run)",
        "==> stage train: done after 10 s",
    ]
    progress.feed("  Running stage 'eval':", T0)
    progress.feed("  ERROR: failed to reproduce 'eval': failed to run", T0 + timedelta(seconds=3))
    assert said[-1] == "==> stage eval: failed after 3 s"


def test_the_failing_stage_and_its_reason_in_one_line():
    traceback = (
        "Running stage 'make':\n> python make.py\nworking\nTraceback (most recent call last):\n"
        '  File "make.py", line 3, in <module>\nValueError: n must be positive\n'
        "ERROR: failed to reproduce 'make': failed to run: python make.py, exited with 1"
    )
    failed = repro_failure(traceback)
    assert str(failed) == "stage make failed: ValueError: n must be positive" and failed.stage == "make"
    own = (
        "Running stage 'train':\n12:00 INFO step 3\nstage train failed: ValueError: bad batch (traceback in "
        ".dvc/tmp/train.traceback.txt)\nERROR: failed to reproduce 'train': failed to run: python -m flows.train"
    )
    assert str(repro_failure(own)).startswith("stage train failed: ValueError: bad batch")  # the stage's own line
    assert (
        str(repro_failure("Reproducing experiment 'x'\nERROR: Key 'sleep' is not in struct"))
        == "Key 'sleep' is not in struct"
    )  # DVC refused before any stage ran
    assert one_line(ReproFailed("stage x failed: y")) == "stage x failed: y"


def test_the_reason_shown_is_the_workers_else_the_states_first_line():
    state = SimpleNamespace(
        name="Failed", message="Flow run encountered an exception: RevisionNotFound: revision 'nope' is not in x\nmore"
    )
    run = SimpleNamespace(state=state)
    assert follow.failure_reason(run, None) == "RevisionNotFound: revision 'nope' is not in x"
    assert follow.failure_reason(run, {"failure": "stage make failed: boom"}) == "stage make failed: boom"


def test_the_log_cursor_shows_each_line_once_even_when_lines_arrive_late():
    at = [0, 0, 0, 1, 2]  # seconds: three lines share a timestamp, more than a page
    logs = [SimpleNamespace(id=i, timestamp=T0 + timedelta(seconds=s), message=f"line {i}") for i, s in enumerate(at)]

    class Client:  # the server: the logs it has, at or after `after_`, oldest first, paged
        known = [logs[0], logs[1], logs[2], logs[4]]

        def read_logs(self, log_filter, sort, limit, offset):
            after = log_filter.timestamp.after_
            return [log for log in self.known if after is None or log.timestamp >= after][offset : offset + limit]

    client, cursor = Client(), follow.LogCursor(uuid4())
    assert [log.message for log in cursor.new_lines(client, page=2)] == ["line 0", "line 1", "line 2", "line 4"]
    assert cursor.new_lines(client, page=2) == []
    client.known = logs  # line 3 reaches the server after line 4 (another process's batch)
    assert [log.message for log in cursor.new_lines(client, page=2)] == ["line 3"]
