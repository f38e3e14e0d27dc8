"""dvc.yaml's code deps are exactly the files each stage runs (tasks/tracking/deps.py, identity.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tasks.config.params import read_yaml
from tasks.tracking import deps
from tasks.tracking.identity import code_identity, stage_code

REPO = Path(__file__).resolve().parents[2]

DVC_YAML = """\
# top comment
stages:
  stage_a:
    cmd: python -m flows.stage_a --out-dir data/a
      --more-args x
    deps:
      - flows/stage_a.py
      - tasks/a.py
      - data/raw      # the input, with a comment
    params:
      - stage_a
    outs:
      - data/a
  other:
    cmd: echo not a flow
    deps:
      - tasks
"""


def _repo(tmp_path: Path) -> Path:
    files = {
        "flows/__init__.py": "",
        "flows/stage_a.py": "from tasks.a import work\n",
        "tasks/__init__.py": "",
        "tasks/a.py": (
            "def work():\n    from tasks.sub import b  # an import inside a function counts\n    return helper(b)\n\n\n"
            "def helper(x):  # a module run by name (accelerate launch -m ...)\n    return launch('tasks.launched', x)\n\n\n"
            "PACKAGES = ('tasks', 'flows')  # bare package names are not modules named by a string\n"
            "SNIPPET = 'tasks.unused'  # nor is a string that only reads like a module: it is not run\n"
        ),
        "tasks/sub/__init__.py": "",
        "tasks/sub/b.py": "from . import c\n",
        "tasks/sub/c.py": "",
        "tasks/launched.py": "",
        "tasks/unused.py": "",
        "dvc.yaml": DVC_YAML,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    return tmp_path


def test_closure_follows_nested_relative_and_launched_imports(tmp_path):
    repo = _repo(tmp_path)
    found = [p.relative_to(repo).as_posix() for p in stage_code(["flows.stage_a"], repo)]
    assert found == [
        "flows/__init__.py",
        "flows/stage_a.py",
        "tasks/__init__.py",
        "tasks/a.py",
        "tasks/launched.py",
        "tasks/sub/__init__.py",
        "tasks/sub/b.py",
        "tasks/sub/c.py",
    ]


def test_check_names_missing_deps_and_write_fixes_them(tmp_path, capsys):
    repo = _repo(tmp_path)
    assert deps.main(["--check", "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "stage_a: runs tasks/sub/b.py but does not depend on it" in err
    assert "stage_a: runs flows/_stage.py" not in err  # only what it runs
    assert "other" not in err  # not a flow stage: left alone

    assert deps.main(["--write", "--repo", str(repo)]) == 0
    assert deps.main(["--check", "--repo", str(repo)]) == 0
    text = (repo / "dvc.yaml").read_text()
    expected_deps = textwrap.indent(
        "\n".join(
            f"- {d}"
            for d in [
                "flows/__init__.py",
                "flows/stage_a.py",
                "tasks/__init__.py",
                "tasks/a.py",
                "tasks/launched.py",
                "tasks/sub/__init__.py",
                "tasks/sub/b.py",
                "tasks/sub/c.py",
            ]
        ),
        " " * 6,
    )
    assert f"    deps:\n{expected_deps}\n      - data/raw      # the input, with a comment\n" in text
    # Everything outside the deps list is byte for byte the same.
    assert text.replace(expected_deps + "\n", "      - flows/stage_a.py\n      - tasks/a.py\n") == DVC_YAML


def test_stale_and_directory_deps_are_reported(tmp_path, capsys):
    repo = _repo(tmp_path)
    yaml_text = DVC_YAML.replace(
        "      - tasks/a.py\n", "      - tasks/a.py\n      - tasks/unused.py\n      - tasks/sub\n"
    )
    (repo / "dvc.yaml").write_text(yaml_text)
    assert deps.main(["--check", "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "stage_a: depends on tasks/unused.py, which it does not run" in err
    assert "stage_a: code dep tasks/sub is a directory; list its files" in err


def test_stage_whose_flow_does_not_exist_is_a_clear_error(tmp_path, capsys):
    repo = _repo(tmp_path)
    (repo / "dvc.yaml").write_text(
        DVC_YAML + "  stage_b:\n    cmd: python -m flows.stage_b\n    deps:\n      - data/a\n"
    )
    before = (repo / "dvc.yaml").read_text()
    assert deps.main(["--write", "--repo", str(repo)]) == 2
    assert "stage stage_b: its cmd runs flows.stage_b, but flows/stage_b.py does not exist" in capsys.readouterr().err
    assert (repo / "dvc.yaml").read_text() == before  # nothing half-written


def test_this_repos_dvc_yaml_lists_the_code_every_stage_runs():
    """The project's own dvc.yaml: fix with `python -m tasks.tracking.deps --write`."""
    problems = deps.report(deps.analyse())
    assert not problems, "\n".join(problems)


def test_code_identity_changes_with_any_file_in_the_closure(tmp_path):
    repo = _repo(tmp_path)
    before = code_identity("stage_a", repo)
    (repo / "tasks/unused.py").write_text("X = 1\n")
    assert code_identity("stage_a", repo) == before  # not run by the stage
    (repo / "tasks/sub/c.py").write_text("X = 1\n")
    assert code_identity("stage_a", repo) != before


def test_lock_check_finds_changed_code_params_and_deps(tmp_path):
    repo = _repo(tmp_path)
    (repo / "params.yaml").write_text("stage_a:\n  lr: 1.0e-4\n  name: no\n")
    deps.write(repo)
    import hashlib

    import yaml

    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    lock_deps = [
        {"path": d, "hash": "md5", "md5": hashlib.md5((repo / d).read_bytes()).hexdigest()}
        for d in spec["stage_a"]["deps"]
        if (repo / d).is_file()
    ] + [{"path": "data/raw", "md5": "x.dir"}]
    lock = {
        "schema": "2.0",
        "stages": {
            "stage_a": {
                "cmd": spec["stage_a"]["cmd"],
                "deps": lock_deps,
                "params": {"params.yaml": {"stage_a": {"lr": 0.0001, "name": "no"}}},
            },
            "other": {"cmd": "echo not a flow", "deps": [{"path": "tasks", "md5": "y.dir"}]},
        },
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert deps.lock_problems(repo) == []
    (repo / "tasks/sub/c.py").write_text("X = 2\n")
    (repo / "params.yaml").write_text("stage_a:\n  lr: 2.0e-4\n  name: no\n")
    assert deps.lock_problems(repo) == [
        "stage_a: tasks/sub/c.py changed since dvc.lock recorded it",
        "stage_a: params stage_a differ from dvc.lock",
    ]
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text() + "  new_stage:\n    cmd: echo\n")
    assert deps.lock_problems(repo)[-1] == "new_stage: not in dvc.lock (never run)"


def test_an_input_folder_named_by_a_param_is_kept_and_resolved(tmp_path):
    """`- ${stage_a.folder}` (dvc.yaml templating from params.yaml): --write keeps it; the lock check
    compares the path DVC resolves it to, and notices when the param names another folder."""
    import yaml

    repo = _repo(tmp_path)
    (repo / "params.yaml").write_text("stage_a:\n  folder: data/raw\n")
    line = "      - ${stage_a.folder}  # photos\n"
    (repo / "dvc.yaml").write_text(DVC_YAML.replace("      - data/raw      # the input, with a comment\n", line))
    assert deps.main(["--write", "--repo", str(repo)]) == 0 and deps.main(["--check", "--repo", str(repo)]) == 0
    assert line in (repo / "dvc.yaml").read_text()
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    lock_deps = [{"path": d, "md5": deps._md5(repo / d)} for d in spec["stage_a"]["deps"] if (repo / d).is_file()]
    (repo / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "stage_a": {
                        "cmd": spec["stage_a"]["cmd"],
                        "deps": lock_deps + [{"path": "data/raw", "md5": "x.dir"}],
                        "params": {"params.yaml": {"stage_a": {"folder": "data/raw"}}},
                    },
                    "other": {"cmd": "echo not a flow", "deps": [{"path": "tasks", "md5": "y.dir"}]},
                }
            }
        )
    )
    assert deps.lock_problems(repo) == []
    (repo / "params.yaml").write_text("stage_a:\n  folder: data/mine\n")
    assert deps.lock_problems(repo) == [
        "stage_a: dep data/mine is new since dvc.lock",
        "stage_a: dep data/raw is gone since dvc.lock",
        "stage_a: params stage_a differ from dvc.lock",
    ]


def test_closure_ends_on_import_cycles(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/__init__.py").write_text("")
    (tmp_path / "tasks/r.py").write_text("from tasks import s\n")
    (tmp_path / "tasks/s.py").write_text("def f():\n    from tasks import r\n    return r\n")
    found = [p.relative_to(tmp_path).as_posix() for p in stage_code(["tasks.r"], tmp_path)]
    assert found == ["tasks/__init__.py", "tasks/r.py", "tasks/s.py"]


# One interpreter imports the libraries every stage shares, then forks a child per stage that
# imports that stage's flow: what each child loads from the project is what a fresh `python -m
# flows.<stage>` loads (no project module is imported before the fork), for a second per stage
# instead of the libraries' ten.
_LOADED_BY_STAGE = """
import json, os, sys, importlib
import numpy, PIL.Image, torch, diffusers, prefect, accelerate, dvclive, webdataset  # libraries only: nothing of the project
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel
from prefect import flow, task
for stage in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        importlib.import_module("flows." + stage)
        from tasks.tracking.identity import REPO, loaded_project_files
        os.write(write, json.dumps([p.relative_to(REPO).as_posix() for p in loaded_project_files()]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(json.dumps({stage: json.loads(f.read())}), flush=True)
    assert os.wait()[1] == 0, stage
"""


def _loaded_by_import(stages: list[str]) -> dict[str, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _LOADED_BY_STAGE, *stages],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    ).stdout
    return {stage: set(files) for line in out.splitlines() for stage, files in json.loads(line).items()}


def test_the_files_python_loads_for_each_stage_are_its_code_deps():
    """Not the analyser checking itself: Python's own record (sys.modules) of what importing each
    stage's flow runs, against dvc.yaml. A project import inside a function (run later, or never)
    shows up here as a dep that was not loaded: import at the top instead. The end-to-end tests
    check the same after the stages ran (tests/helpers/e2e.py)."""
    spec = read_yaml(REPO / "dvc.yaml")["stages"]
    listed = {stage: {str(d) for d in s["deps"] if deps.is_code_dep(str(d))} for stage, s in spec.items()}
    loaded = _loaded_by_import(list(listed))
    assert loaded.keys() == listed.keys()
    problems = [
        f"{stage}: loaded, not a dep: {sorted(loaded[stage] - listed[stage])}; "
        f"a dep, not loaded: {sorted(listed[stage] - loaded[stage])}"
        for stage in listed
        if loaded[stage] != listed[stage]
    ]
    assert not problems, "\n".join(problems)


def test_no_training_stage_runs_the_demo_data_code():
    spec = read_yaml(REPO / "dvc.yaml")["stages"]
    for stage, s in spec.items():
        if stage not in ("fetch_cartoons", "fetch_faces", "prepare_subject"):
            assert not [d for d in s["deps"] if str(d).startswith("tasks/synthetic/")], stage
