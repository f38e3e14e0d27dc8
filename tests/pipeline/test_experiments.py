"""DVC experiments end to end, in a copy of the repo with tiny params.

- `dvc exp run -S` on every training section (train_cartoon with a nested key, train_vae, train_ldm,
  train_dreambooth): DVC rewrites params.yaml with its YAML 1.2 writer (`mixed_precision: no`
  unquoted) and every stage still reads it, uses the overrides and does not resume a checkpoint
  made under other params;
- the README's "Comparing runs" commands, parsed from README.md and run verbatim on that repo: each
  exits 0, the `--temp` experiment runs evaluate_cartoon alone (checkpoints are not outs, so a fresh
  copy does not see the training stages as changed), and `dvc exp show`'s table fits 120 columns.

- the face chain that experiment built (faces -> VAE -> latents -> LDM -> subject latents + class
  samples -> DreamBooth), applied with `dvc exp apply` in a copy: its models sample, and the cache
  rules of both model stages hold (nothing reruns; a DreamBooth training param re-runs only
  train_dreambooth, the class samples stay; a sampling param samples again; a train_ldm param
  re-runs only train_ldm; a new VAE re-encodes the latents).

One module-scoped repo: the cartoon chain as the baseline, then one experiment that trains the face
chain from scratch and the cartoon model again (the face chain runs once, under DVC's params.yaml).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from tasks.shards.dataset import read_manifest
from tests.helpers.e2e import REPO, _env, apply_params, assert_up_to_date, copy_repo, dvc, repro
from tests.helpers.e2e import TINY_CARTOON_CHAIN as CARTOON

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # about 30 stage runs; each imports torch + diffusers
SMALL = {
    "fetch_faces": {"synthetic": {"num_images": 24}},
    "align_faces": {"shard_size": 10, "transform_size": 512, "output_size": 64},
    "train_vae": {"resolution": 32, "loss": {"batch_size": 4}, "training": {"max_train_steps": 4}},
    "encode_latents": {"batch_size": 8},
    "train_ldm": {
        "data": {"batch_size": 4},
        "model": {"block_out_channels": [16, 32], "norm_num_groups": 8},
        "training": {"num_epochs": 1, "samples_every_epochs": 1},
        "samples": {"num_images": 2, "num_inference_steps": 2},
    },
}
FACES = {
    **SMALL,
    "prepare_subject": {"synthetic": {"num_photos": 4}, "output_size": 64, "transform_size": 512, "min_photos": 3},
    "sample_class": {
        "num_class_samples": 6,
        "num_inference_steps": 2,
        "batch_size": 4,
        "shard_size": 4,
        "grid_images": 4,
    },
    "train_dreambooth": {
        "instance_batch_size": 2,
        "class_batch_size": 2,
        "samples": {"num_images": 2, "num_inference_steps": 2},
        "training": {"num_epochs": 2, "samples_every_epochs": 2, "checkpointing_steps": 2},
    },
}
TINY = {
    **FACES,
    **CARTOON,
    "train_attribute_classifier": {"epochs": 1, "batch_size": 16},
    # a judge trained for one epoch on 36 images reads little: count whatever beats chance
    "evaluate_cartoon": {
        "guidance_scales": [0, 2],
        "num_samples": 4,
        "num_inference_steps": 2,
        "batch_size": 4,
        "grid_images": 4,
        "min_ceiling": 0.0,
        "min_ceiling_over_chance": 1.0,
    },
    "evaluate_faces": {
        "num_samples": 4,
        "batch_size": 4,
        "num_inference_steps": 2,
        "grid_images": 4,
        "k_nearest": 1,
        "kid": {"num_subsets": 3, "subset_size": 4},
        "features": {"workers": 1},
    },
}
EXP = "all-training"
OVERRIDES = {
    "train_cartoon.training.learning_rate": "5.0e-4",  # nested; the baseline's is 2.0e-3
    "train_vae.training.max_train_steps": "3",  # the baseline's: 4
    "train_ldm.training.num_epochs": "2",  # 1
    "train_dreambooth.prior_loss_weight": "0.5",
}  # 2.0
TRAINING = ("train_cartoon", "train_vae", "train_ldm", "train_dreambooth")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
WIDTH = 120


def readme_commands() -> list[str]:
    """The first bash block of the README's "Comparing runs", one entry per command."""
    section = (REPO / "README.md").read_text().split("## Comparing runs", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    assert all(len(line) <= WIDTH for line in block.splitlines()), "README lines wider than the terminal"
    lines = block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _git(repo, *args: str) -> str:
    return subprocess.run(GIT + list(args), cwd=repo, check=True, capture_output=True, text=True).stdout


def _shell(repo, command: str) -> subprocess.CompletedProcess:
    """A README line as a user's shell runs it; stages that run share one Prefect server (faster)."""
    argv = ["bash", "-c", command]
    if "dvc repro" in command or "dvc exp run" in command:
        argv = [sys.executable, "-m", "flows.local_server", *argv]
    env = {
        **_env(),
        "PREFECT_HOME": str(repo / ".prefect"),
        "COLUMNS": "1000",  # rich squeezes nothing
        "GIT_AUTHOR_NAME": "u",
        "GIT_AUTHOR_EMAIL": "u@u",
        "GIT_COMMITTER_NAME": "u",
        "GIT_COMMITTER_EMAIL": "u@u",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "commit.gpgsign",
        "GIT_CONFIG_VALUE_0": "false",
    }
    return subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


def _exp_rev(repo, name: str) -> str:
    rows = json.loads(dvc(repo, "exp", "show", "-A", "--json").stdout)
    revs = [r["rev"] for row in rows for e in row.get("experiments") or [] if e["name"] == name for r in e["revs"]]
    assert len(revs) == 1, f"experiment {name}: {revs}"
    return revs[0]


def _lr_curve(repo, rev: str) -> dict[int, float]:
    tsv = _git(repo, "show", f"{rev}:dvclive/train_cartoon/plots/metrics/train/lr.tsv").splitlines()[1:]
    return {int(step): float(lr) for step, lr in (row.split("\t") for row in tsv)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The cartoon chain committed as the baseline on main, then the experiment on every training section."""
    repo = copy_repo(tmp_path_factory.mktemp("experiments"), TINY)
    _git(repo, "branch", "-M", "main")
    repro(repo, "evaluate_cartoon")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "cartoon baseline")
    baseline = _git(repo, "rev-parse", "HEAD").strip()
    sets = [arg for key, value in OVERRIDES.items() for arg in ("-S", f"{key}={value}")]
    out = dvc(repo, "exp", "run", "-n", EXP, *sets, server=True).stdout
    return {"repo": repo, "baseline": baseline, "exp_out": out, "rev": _exp_rev(repo, EXP)}


def test_an_experiment_overrides_every_training_stage(lab):
    repo, rev = lab["repo"], lab["rev"]
    assert set(TRAINING) | {"evaluate_cartoon", "evaluate_faces"} <= _ran(lab["exp_out"])
    assert not _ran(lab["exp_out"]) & {"fetch_cartoons", "preprocess_cartoons", "train_attribute_classifier"}

    # DVC wrote params.yaml itself (YAML 1.2: the quotes around "no" are gone) and the stages read it.
    params = _git(repo, "show", f"{rev}:params.yaml")
    assert re.search(r"^\s+mixed_precision: no\b", params, flags=re.M), params
    rows = json.loads(dvc(repo, "exp", "show", "-A", "--json").stdout)
    data = next(r["data"] for row in rows for e in row.get("experiments") or [] for r in e["revs"] if r["rev"] == rev)
    values = data["params"]["params.yaml"]["data"]
    for key, value in OVERRIDES.items():
        section = values
        for part in key.split("."):
            section = section[part]
        assert section == pytest.approx(float(value)), key

    def metrics(name: str) -> dict:
        return json.loads(_git(repo, "show", f"{rev}:metrics/{name}.json"))

    assert metrics("train_vae")["training"]["steps"] == 3
    assert metrics("train_ldm")["epochs"] == 2
    assert metrics("train_dreambooth")["prior_loss_weight"] == 0.5
    assert metrics("train_dreambooth")["final_prior_loss"] > 0
    # the nested learning rate: the same schedule at a quarter of the baseline's height
    base, exp = _lr_curve(repo, lab["baseline"]), _lr_curve(repo, rev)
    assert base.keys() == exp.keys() and all(exp[s] == pytest.approx(base[s] / 4) for s in base)
    assert {"reliable_accuracy_vs_ceiling", "best_guidance"} <= metrics("evaluate_cartoon").keys()
    assert "face_detect_rate" in metrics("evaluate_faces")
    # The workspace held the baseline's train_cartoon checkpoints: other params, so not resumed.
    timings = json.loads(_git(repo, "show", f"{rev}:metrics/timings/train_cartoon.json"))
    assert timings["resumed_from_step"] is None


@pytest.fixture(scope="module")
def face_chain(lab, tmp_path_factory):
    """A copy of the lab repo with the experiment's face chain in the workspace (`dvc exp apply`)."""
    repo = tmp_path_factory.mktemp("face-chain") / "repo"
    shutil.copytree(lab["repo"], repo, symlinks=True)
    dvc(repo, "exp", "apply", EXP)
    return repo


def test_the_face_chain_samples_and_keeps_its_cache_rules(face_chain):
    repo = face_chain
    assert_up_to_date(repo)
    # The latent track.
    vae_metrics = json.loads((repo / "metrics/train_vae.json").read_text())
    assert vae_metrics["psnr_val_db"] > 0 and vae_metrics["downsample_factor"] == 4
    latents = read_manifest(repo / "data/faces/latents")
    assert latents["vae"]["identity"] == vae_metrics["vae_identity"] and latents["latent_shape"] == [8, 8, 8]
    assert latents["counts"]["images"] == 24
    ldm = json.loads((repo / "metrics/train_ldm.json").read_text())
    assert ldm["vae_identity"] == vae_metrics["vae_identity"] and ldm["steps"] >= 1
    from pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(repo / "models/ldm")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(
        batch_size=1, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images.shape == (1, 32, 32, 3)

    # DreamBooth.
    subject, klass = (
        read_manifest(repo / "data/faces/subject_latents"),
        read_manifest(repo / "data/faces/class_latents"),
    )
    assert subject["counts"]["images"] == 4 and klass["counts"]["images"] == 6
    assert subject["vae"]["identity"] == klass["vae"]["identity"] == klass["base"]["vae"]
    metrics = json.loads((repo / "metrics/train_dreambooth.json").read_text())
    assert metrics["steps"] == 4 and metrics["base_identity"] == klass["base"]["identity"]
    assert metrics["final_instance_loss"] > 0 and metrics["final_prior_loss"] > 0
    assert (repo / "eval/dreambooth/class_samples.png").is_file()
    assert list((repo / "dvclive/train_dreambooth/plots/images").rglob("*.png"))
    from pipelines.dreambooth import load_subject_pipeline

    pipe = load_subject_pipeline(repo / "models/dreambooth")
    assert pipe.has_identifier
    images = pipe(
        batch_size=1, subject=False, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 32, 32, 3)

    # A training param: only train_dreambooth runs; the class samples are not drawn again.
    apply_params(repo, {"train_dreambooth": {"prior_loss_weight": 0.25}})  # the experiment's: 0.5
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'train_dreambooth'" in out and "Running stage 'sample_class'" not in out
    # A sampling param: sampled again (and the fine-tuning follows).
    apply_params(repo, {"sample_class": {"seed": 1}})
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'sample_class'" in out and "Running stage 'encode_subject'" not in out
    assert read_manifest(repo / "data/faces/class_latents")["fingerprint"] != klass["fingerprint"]
    assert_up_to_date(repo, "train_dreambooth")

    # A train_ldm param: only train_ldm runs again.
    apply_params(repo, {"train_ldm": {"training": {"seed": 1}}})
    out = repro(repo, "train_ldm").stdout
    assert "Running stage 'train_ldm'" in out and "Running stage 'encode_latents'" not in out

    # A new VAE: the latents are encoded again, keyed by the new identity.
    apply_params(repo, {"train_vae": {"training": {"seed": 1}}})
    out = repro(repo, "encode_latents").stdout
    assert "Running stage 'train_vae'" in out and "Running stage 'encode_latents'" in out
    new = read_manifest(repo / "data/faces/latents")
    assert new["vae"]["identity"] != latents["vae"]["identity"]
    assert new["vae"]["identity"] == json.loads((repo / "metrics/train_vae.json").read_text())["vae_identity"]
    assert "train_ldm" in dvc(repo, "status", "train_ldm").stdout  # stale now


def test_the_readme_compare_runs_commands(lab):
    repo = lab["repo"]
    commands = readme_commands()
    assert [c for c in commands if c.startswith("dvc exp show")], commands
    for command in commands:
        proc = _shell(repo, command)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        argv = shlex.split(command)
        if argv[:3] == ["dvc", "exp", "run"]:
            ran = _ran(proc.stdout)
            if "--temp" in argv:  # a fresh copy without checkpoints/: nothing upstream looks changed
                assert ran == {"evaluate_cartoon"}, proc.stdout[-3000:]
            else:
                assert ran == {"train_cartoon", "evaluate_cartoon"}, proc.stdout[-3000:]
                timings = json.loads((repo / "metrics/timings/train_cartoon.json").read_text())
                assert timings["resumed_from_step"] is None  # the checkpoints were the baseline's lr
        elif argv[:3] == ["dvc", "exp", "show"]:
            table = proc.stdout
            wide = [line for line in table.splitlines() if len(line) > WIDTH]
            assert not wide, "\n".join(wide)
            assert "…" not in table, table  # nothing collapsed or cut
            for column in (
                "reliable_accuracy_vs_ceiling",
                "evaluate_cartoon.seed",
                "train_cartoon.training.learning_rate",
                "seed-1",
                "lr-low",
            ):
                assert column in table, table
            # no dep md5s (metrics/attribute_classifier.json is a dep of evaluate_cartoon), no metric echoes
            assert "metrics/" not in table and "method" not in table and "Created" not in table, table
        elif argv[:3] == ["dvc", "metrics", "diff"]:
            assert "metrics/train_cartoon.json" in proc.stdout or "final_loss" in proc.stdout, proc.stdout
        elif argv[:3] == ["dvc", "params", "diff"]:
            assert "train_cartoon.training.learning_rate" in proc.stdout, proc.stdout
    # after `dvc exp apply`: the workspace holds the experiment, and params.yaml is DVC's
    assert (
        "learning_rate: 0.001" in (repo / "params.yaml").read_text()
        or "learning_rate: 1e-3" in (repo / "params.yaml").read_text()
    )
