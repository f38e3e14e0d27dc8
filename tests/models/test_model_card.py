"""Model cards (tasks/reporting/model_card.py): every kind of model folder the project saves
gets a README.md that is true: front matter that parses as YAML with the data's license, what the
model achieves against its targets (the evaluation's figures only when they are of this folder), the
git commit, and a load snippet that runs in an isolated interpreter (diffusers alone where the folder
carries its code).

Tiny models saved by the project's own save paths; data folders are manifests in the stages' formats
(the card reads nothing else from them). train_vae runs for real (2 steps): its call site is tested."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from PIL import Image

from pipelines import LatentDiffusionPipeline, save_portable
from pipelines.dreambooth import SubjectDiffusionPipeline, module_identity, with_identifier
from tasks.reporting import model_card
from tasks.reporting.model_card import RESULTS, last_grid, read_front_matter, write_model_card
from tasks.reporting.timings import write_metrics
from tasks.shards.dataset import AtomicShardWriter, split_of, write_manifest
from tasks.tracking.identity import stage_code
from tests.helpers.configs import section
from tests.helpers.models import save_tiny_cartoon, tiny_latent_unet
from tests.helpers.models import tiny_patch_vae as tiny_vae

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ data folders


def aligned_faces(out: Path, source: str | None, n: int = 16, size: int = 16) -> Path:
    """align_faces' format: png + json (the raw record's fields, `source` among them), manifest with splits."""
    rng = np.random.default_rng(0)
    by_split: dict[str, list] = {"train": [], "val": []}
    for i in range(n):
        key = f"face{i:03d}"
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        record = {"key": key, "file": f"in-the-wild-images/{key}.png", **({"source": source} if source else {})}
        by_split[split_of(key, 0.25)].append({"__key__": key, "png": buf.getvalue(), "json": record})
    splits = {}
    for split, samples in by_split.items():
        with AtomicShardWriter(out, split, max_count=n) as w:
            for s in samples:
                w.write(s)
        splits[split] = {"count": len(samples), "shards": w.shards}
    write_manifest(
        out,
        {"kind": "faces_aligned", "splits": splits, "all_shards": [s for sp in splits.values() for s in sp["shards"]]},
    )
    return out


def latents_of(out: Path, aligned: Path) -> Path:
    out.mkdir(parents=True)
    write_manifest(out, {"kind": "faces_latents", "source": {"dir": str(aligned), "fingerprint": "x"}})
    return out


def cartoon_shards(out: Path, fetched_from: str) -> Path:
    """preprocess_cartoons' manifest names its raw folder; fetch_cartoons' fetch.json there names the source."""
    raw = out.parent / "raw"
    raw.mkdir(parents=True)
    out.mkdir()
    (raw / "fetch.json").write_text(json.dumps({"source": fetched_from}))
    write_manifest(out, {"format": 1, "source": str(raw)})
    return out


def a_grid(live: Path) -> Path:
    """Two grids as the engine logs them (dvclive); the card takes the last."""
    folder = live / "plots" / "images" / "samples"
    folder.mkdir(parents=True)
    for epoch, colour in ((1, "red"), (2, "blue")):
        Image.new("RGB", (8, 8), colour).save(folder / f"epoch-{epoch:03d}.png")
    return live


# ------------------------------------------------------------------------------------------ tiny models


def save_cartoon(out: Path) -> None:
    save_tiny_cartoon(out, [("hair_color", 10), ("face_color", 11)])


def card_for(model: Path, stage: str, metrics: dict, tmp: Path, params: dict | None = None, **kw) -> Path:
    """write_metrics as the stage does, then the card."""
    metrics_path = tmp / "metrics" / f"{stage}-{model.name}.json"
    write_metrics(metrics_path, metrics, {"seconds": 1.0})
    return write_model_card(model, stage=stage, params=params or section(stage), metrics_path=metrics_path, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cards")
    faces = latents_of(root / "data/latents", aligned_faces(root / "data/aligned", "synthetic"))
    subject = latents_of(root / "data/subject_latents", aligned_faces(root / "data/subject", "synthetic", n=4))
    models = root / "models"

    ldm = LatentDiffusionPipeline(
        unet=tiny_latent_unet(), vae=tiny_vae(), scheduler=DDPMScheduler(num_train_timesteps=50)
    )
    save_portable(ldm, models / "ldm")  # as train_ldm saves it
    card_for(
        models / "ldm",
        "train_ldm",
        {"latent_shape": [4, 8, 8], "scaling_factor": 0.5, "steps": 3, "final_loss": 0.123456789012345},
        root,
        data_dirs=[faces],
        sample_grid=last_grid(a_grid(root / "live_ldm")),
    )

    klass = root / "data/class_latents"
    klass.mkdir()
    write_manifest(klass, {"kind": "faces_latents", "base": {"dir": str(models / "ldm"), "identity": "x"}})
    unet = with_identifier(tiny_latent_unet())
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    save_portable(
        SubjectDiffusionPipeline(unet=unet, vae=tiny_vae(), scheduler=DDPMScheduler(num_train_timesteps=50)),
        models / "dreambooth",
    )  # as train_dreambooth saves a full fine-tune
    card_for(
        models / "dreambooth",
        "train_dreambooth",
        {"method": "full", "identifier": True, "steps": 2, "final_prior_loss": None},
        root,
        data_dirs=[subject, klass],
        base_model=models / "ldm",
    )

    save_cartoon(models / "cartoon")  # as train_cartoon saves it
    card_for(
        models / "cartoon",
        "train_cartoon",
        {"conditioning": "class_embedding", "resolution": 8, "steps": 2},
        root,
        data_dirs=[cartoon_shards(root / "data/cartoons/shards", "cartoonset10k")],
    )

    save_lora(models / "lora", models / "ldm")
    card_for(
        models / "lora",
        "train_dreambooth",
        {"method": "lora", "steps": 2},
        root,
        params=section("train_dreambooth", method="lora"),
        data_dirs=[subject, klass],
        base_model=models / "ldm",
    )

    train_vae(root / "data/aligned", models / "vae", root / "metrics/train_vae.json")  # the stage writes its card
    return root


def train_vae(aligned: Path, out: Path, metrics_path: Path) -> None:
    """train_vae's task (the flow's, which writes the card), 2 steps of a tiny autoencoder."""
    from flows.train_vae import train_vae_task
    from tasks.latent.config import TrainVaeConfig
    from tests.helpers.configs import stage_config

    config = stage_config(
        TrainVaeConfig,
        "train_vae",
        device="cpu",
        resolution=16,
        eval_batch_size=8,
        model={"patch_size": 2, "latent_channels": 4, "hidden_channels": 8, "encoder_blocks": 1, "decoder_blocks": 1},
        loss={**section("train_vae")["loss"], "batch_size": 4},
        training={
            **section("train_vae")["training"],
            "max_train_steps": 2,
            "lr_warmup_steps": 1,
            "log_every_steps": 1,
            "checkpointing_steps": 100,
            "samples_every_epochs": 100,
        },
    )
    train_vae_task.fn(
        str(aligned),
        str(out),
        str(metrics_path),
        str(out.parent / "live_vae"),
        str(out.parent / "checkpoints_vae"),
        config,
    )


def save_lora(out: Path, base_dir: Path) -> None:
    """As train_dreambooth saves `method: lora` (its save_adapter)."""
    from tasks.dreambooth.config import TrainDreamboothConfig
    from tasks.dreambooth.train import build_unet, save_adapter
    from tests.helpers.configs import stage_config

    cfg = stage_config(TrainDreamboothConfig, "train_dreambooth", method="lora", identifier=True)
    base = LatentDiffusionPipeline.from_pretrained(str(base_dir))
    save_adapter(build_unet(base.unet, cfg), cfg, str(base_dir), module_identity(base.unet), str(out))


# ------------------------------------------------------------------------------------------ reading a card


def card_results(text: str) -> dict[str, tuple[str, str, str]]:
    """The Results table: figure key -> (value, target, met)."""
    section = text.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`: .*? \| (.*?) \| (.*?) \| (.*?) \|$", section, flags=re.M)
    return {key: (value, target, met) for key, value, target, met in rows}


def snippet(text: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return code


def metrics_path_of(text: str) -> Path:
    return Path(re.search(r"Training figures \(steps, final losses\): `([^`]+)`", text).group(1))


@pytest.mark.parametrize("name", ["ldm", "dreambooth", "cartoon", "lora"])
def test_a_card_is_true_to_the_stage_outputs(world, name):
    text = (world / "models" / name / "README.md").read_text()
    meta = read_front_matter(text)
    assert meta["library_name"] == "diffusers" and "diffusers" in meta["tags"]
    stage = "train_" + ("dreambooth" if name == "lora" else name)
    results = card_results(text)
    # Measured after training (evaluate_faces, evaluate_cartoon): said where, with the targets, not invented.
    assert list(results) == [f.key for f in RESULTS[stage].figures]
    assert all(value == met == "pending" for value, _, met in results.values())
    assert f"`dvc repro {RESULTS[stage].by}` writes these figures to `{RESULTS[stage].metrics}`" in text
    assert metrics_path_of(text).is_file()  # the training figures are pointed at, not echoed
    assert "final_loss" not in text and "base_identity" not in text
    params = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1))
    stage = next(iter(params))
    assert params[stage] == (section(stage, method="lora") if name == "lora" else section(stage))
    # The newest commit of the stage's code (not HEAD: the card must depend on the stage's deps alone).
    files = [p.relative_to(REPO).as_posix() for p in stage_code([f"flows.{stage}"])]
    last = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%H", "--", *files], capture_output=True, text=True
    )
    if last.returncode == 0 and last.stdout.strip():
        assert f"git commit `{last.stdout.strip()}`" in text


def test_licenses_and_base_models_follow_the_data(world):
    meta = {
        n: read_front_matter((world / "models" / n / "README.md").read_text())
        for n in ("ldm", "dreambooth", "cartoon", "lora")
    }
    assert (meta["ldm"]["license"], meta["ldm"]["license_name"]) == ("other", "facediff-synthetic")
    assert meta["cartoon"]["license"] == "cc-by-4.0" and "license_name" not in meta["cartoon"]
    # The fine-tune: synthetic subject photos, class samples of a base trained on synthetic faces.
    assert meta["dreambooth"]["license_name"] == "facediff-synthetic"
    assert meta["dreambooth"]["base_model"] == str(world / "models/ldm")
    assert meta["dreambooth"]["base_model_relation"] == "finetune" and "base_model" not in meta["ldm"]
    assert meta["lora"]["base_model_relation"] == "adapter" and "lora" in meta["lora"]["tags"]


def test_the_sample_grid_travels_with_the_model(world):
    text = (world / "models/ldm/README.md").read_text()
    assert "![samples](samples.png)" in text
    grid = world / "models/ldm/samples.png"
    assert Image.open(grid).getpixel((0, 0)) == (0, 0, 255)  # the last grid the engine logged
    assert "![samples]" not in (world / "models/cartoon/README.md").read_text()  # none given, none claimed


def test_ffhq_folder_and_mixed_data_licenses(tmp_path):
    ffhq = aligned_faces(tmp_path / "ffhq", None)
    folder = aligned_faces(tmp_path / "folder", "folder")
    assert model_card.data_licenses(ffhq) == [model_card.LICENSES["ffhq"]]
    assert model_card._combined(model_card._licenses([ffhq], None))[0] == "cc-by-nc-sa-4.0"
    mixed = model_card._combined(model_card._licenses([ffhq, folder], None))
    assert mixed[:2] == ("other", "mixed") and "FFHQ" in mixed[2] and "user supplied" in mixed[2]
    (tmp_path / "bare").mkdir()
    write_manifest(tmp_path / "bare", {"counts": {}})
    assert model_card.data_licenses(tmp_path / "bare") == [model_card.UNKNOWN]


def test_outside_git_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(model_card, "REPO", tmp_path)
    assert model_card.git_state() == {"commit": None, "dirty": None}


def test_the_evaluations_figures_are_shown_only_for_the_folder_it_measured(world, tmp_path, monkeypatch):
    """A card written when metrics/evaluate_faces.json holds figures of this very folder shows them, met
    or missed; figures of another folder (the model this one replaced) are not passed off as its own."""
    from pipelines.folders import folder_identity

    model = tmp_path / "models" / "dreambooth"
    shutil.copytree(world / "models/dreambooth", model)
    monkeypatch.chdir(tmp_path)  # stages run at the repository root; metrics/ is relative to it
    measured = {
        "id_top1": 0.8125,
        "id_top1_class": 0.25,
        "id_top1_ceiling": 0.875,
        "id_top1_base": 0.0625,
        "subject_identity_ok": True,
        "subject_prior_ok": False,
        "subject_folder_identity": folder_identity(model),
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate_faces.json").write_text(json.dumps(measured))
    data = [world / "data/subject_latents", world / "data/class_latents"]
    text = card_for(model, "train_dreambooth", {"steps": 2}, tmp_path / "t", data_dirs=data).read_text()
    assert card_results(text) == {
        "id_top1": ("0.8125", ">= 0.8 x the photos' own id_top1 (0.88) and >= the base model's (0.06) + 0.4", "met"),
        "id_top1_class": ("0.25", "within 0.05 of the base model's (0.06)", "**missed**"),
    }
    assert "written by `evaluate_faces` for this folder" in text

    (tmp_path / "metrics/evaluate_faces.json").write_text(json.dumps({**measured, "subject_folder_identity": "other"}))
    text = card_for(model, "train_dreambooth", {"steps": 2}, tmp_path / "t", data_dirs=data).read_text()
    assert {met for _, _, met in card_results(text).values()} == {"pending"}
    assert "held figures of another model folder" in text


# ------------------------------------------------------------------------------------------ train_vae, for real


def test_train_vae_writes_a_true_card_with_its_target(world):
    text = (world / "models/vae/README.md").read_text()
    metrics = json.loads((world / "metrics/train_vae.json").read_text())
    value, target, met = card_results(text)["psnr_gain_over_bilinear_db"]
    assert float(value) == pytest.approx(metrics["psnr_gain_over_bilinear_db"], rel=1e-3)
    assert target == f">= {section('train_vae')['min_gain_over_bilinear_db']:g} dB (params min_gain_over_bilinear_db)"
    assert met == ("met" if metrics["target_met"] else "**missed**")
    assert card_results(text)["val_images"][2] == ("met" if metrics["reliable"] else "**missed**")
    assert read_front_matter(text)["license_name"] == "facediff-synthetic"
    assert "python -m pipelines.sample" not in text  # an autoencoder: nothing to sample


# ------------------------------------------------------------------------------------------ the snippets run

# A fresh interpreter: -I (no PYTHONPATH, no cwd on sys.path); for "diffusers alone" also -S (no .pth
# files: the project's editable install is one) and only the venv's site-packages.
RUNNER = """
import importlib.util, json, os, sys
if {alone!r}:
    sys.path.append({site!r})
    assert importlib.util.find_spec("pipelines") is None and importlib.util.find_spec("tasks") is None, sys.path
for name, code in json.loads(sys.stdin.read()).items():
    os.makedirs(name)
    os.chdir(name)
    exec(compile(code, name + "/README.md", "exec"), {{"__name__": "__main__"}})
    assert os.path.isfile("sample.png") or name == "vae", name
    os.chdir("..")
"""


def _run_snippets(snippets: dict[str, str], where: Path, project: bool) -> None:
    elsewhere = where / ("with_project" if project else "diffusers_alone")
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(elsewhere / "hf"), OMP_NUM_THREADS="1")
    flags = ["-I"] if project else ["-I", "-S"]
    code = RUNNER.format(alone=not project, site=sysconfig.get_paths()["purelib"])
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code],
        input=json.dumps(snippets),
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_portable_cards_load_and_sample_with_diffusers_alone(world, tmp_path):
    cards = {n: (world / "models" / n / "README.md").read_text() for n in ("ldm", "dreambooth")}
    for text in cards.values():
        assert "trust_remote_code=True" in text and "diffusers alone" in text
    assert "subject=False" in snippet(cards["dreambooth"])  # identifier model: subject and class
    _run_snippets({n: snippet(t) for n, t in cards.items()}, tmp_path, project=False)


def test_cards_of_folders_without_their_code_say_so_and_run_with_the_project(world, tmp_path):
    cards = {n: (world / "models" / n / "README.md").read_text() for n in ("cartoon", "lora", "vae")}
    assert "This project's `pipelines` package" in cards["cartoon"] and "peft" in cards["lora"]
    _run_snippets({n: snippet(t) for n, t in cards.items()}, tmp_path, project=True)
