"""`python -m pipelines.sample`: every kind of model folder the project saves, each kind's
own options, clear one-line errors, and the same pixels as the pipeline call with the same seed.

Tiny randomly initialised models, saved as the training stages save them, in a `models/` folder of
a work directory, so the README's commands run there exactly as written."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from pipelines import CartoonDiffusionPipeline, LatentDiffusionPipeline, make_scheduler, save_portable
from pipelines.dreambooth import SubjectDiffusionPipeline, load_subject_pipeline, module_identity, with_identifier
from pipelines.sample import grid, main
from tests.helpers.models import save_tiny_cartoon, tiny_latent_unet
from tests.helpers.models import tiny_patch_vae as tiny_vae

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
# Cartoon Set's names and variant counts for the attributes the README's commands name.
ATTRIBUTES = (("hair_color", 10), ("face_color", 11), ("glasses", 12))


# ------------------------------------------------------------------------------ tiny models, saved


def save_cartoon(out: Path) -> None:
    """As train_cartoon saves it (save_pretrained)."""
    save_tiny_cartoon(out, ATTRIBUTES)


def save_ldm(out: Path) -> None:
    """As train_ldm saves it (save_portable)."""
    save_portable(
        LatentDiffusionPipeline(
            unet=tiny_latent_unet(), vae=tiny_vae(), scheduler=DDPMScheduler(num_train_timesteps=50)
        ),
        out,
    )


def save_dreambooth(out: Path) -> None:
    """As train_dreambooth saves a full fine-tune with an identifier (save_portable); the identifier's
    embedding made non-zero so subject and class differ."""
    unet = with_identifier(tiny_latent_unet())
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    save_portable(
        SubjectDiffusionPipeline(unet=unet, vae=tiny_vae(), scheduler=DDPMScheduler(num_train_timesteps=50)), out
    )


def save_lora(out: Path, base_dir: Path) -> None:
    """As train_dreambooth saves `method: lora` (tasks.dreambooth.train.save_adapter)."""
    from tasks.dreambooth.config import TrainDreamboothConfig
    from tasks.dreambooth.train import build_unet, save_adapter
    from tests.helpers.configs import stage_config

    cfg = stage_config(TrainDreamboothConfig, "train_dreambooth", method="lora", identifier=True)
    base = LatentDiffusionPipeline.from_pretrained(str(base_dir))
    unet = build_unet(base.unet, cfg)
    with torch.no_grad():  # trained weights, not the identity start
        for name, p in unet.named_parameters():
            if "lora_B" in name or name.startswith("class_embedding."):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    save_adapter(unet, cfg, str(base_dir), module_identity(base.unet), str(out))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A work directory whose models/ holds one folder per kind."""
    root = tmp_path_factory.mktemp("sample")
    models = root / "models"
    save_cartoon(models / "cartoon")
    save_ldm(models / "ldm")
    save_dreambooth(models / "dreambooth")
    save_portable(
        SubjectDiffusionPipeline(
            unet=tiny_latent_unet(),
            vae=tiny_vae(),  # no identifier
            scheduler=DDPMScheduler(num_train_timesteps=50),
        ),
        models / "dreambooth_plain",
    )
    tiny_vae().save_pretrained(models / "vae")  # as train_vae saves it
    return root


def _run(work: Path, argv: list[str], monkeypatch) -> int:
    monkeypatch.chdir(work)
    return main(argv)


def _grid_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------ the same pixels


def test_cartoon_grid_is_the_pipeline_call(work, monkeypatch, capsys):
    argv = [
        "models/cartoon",
        "--num-images",
        "5",
        "--seed",
        "3",
        "--attr",
        "hair_color=3",
        "--attr",
        "glasses=11",
        "--guidance-scale",
        "2.5",
        "--steps",
        "3",
        "--scheduler",
        "ddim",
        "--out",
        "out/cartoon.png",
    ]
    assert _run(work, argv, monkeypatch) == 0
    err = capsys.readouterr().err
    assert "3/3" in err  # the pipeline's progress bar, one call of 3 steps
    pipe = CartoonDiffusionPipeline.from_pretrained(str(work / "models/cartoon"))
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        [{"hair_color": 3, "glasses": 11}] * 5,
        guidance_scale=2.5,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(3),
    ).images
    got = _grid_pixels(work / "out/cartoon.png")
    assert got.shape == (2 * 8, 3 * 8, 3)  # 5 images: 3 columns, 2 rows, the sixth cell blank
    assert np.array_equal(got, np.asarray(grid(images)))
    assert (got[8:, 16:] == 255).all()


def test_ldm_grid_is_the_pipeline_call_and_seeds_differ(work, monkeypatch):
    for seed in ("0", "1"):
        argv = ["models/ldm", "--num-images", "4", "--seed", seed, "--steps", "2", "--out", f"ldm{seed}.png"]
        assert _run(work, argv, monkeypatch) == 0
    pipe = LatentDiffusionPipeline.from_pretrained(str(work / "models/ldm"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(_grid_pixels(work / "ldm0.png"), np.asarray(grid(images)))
    assert not np.array_equal(_grid_pixels(work / "ldm0.png"), _grid_pixels(work / "ldm1.png"))


@pytest.mark.parametrize(
    "options, call",
    [
        (["--guidance-scale", "2"], {"guidance_scale": 2.0}),
        (["--class"], {"subject": False}),
    ],
)
def test_dreambooth_grid_is_the_pipeline_call(work, monkeypatch, options, call):
    out = f"db{len(options)}.png"
    assert (
        _run(work, ["models/dreambooth", "--num-images", "3", "--steps", "2", "--out", out, *options], monkeypatch) == 0
    )
    pipe = load_subject_pipeline(work / "models/dreambooth")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **call).images
    assert np.array_equal(_grid_pixels(work / out), np.asarray(grid(images)))


def test_a_lora_adapter_samples_on_its_base(work, monkeypatch, tmp_path):
    save_lora(tmp_path / "lora", work / "models/ldm")
    argv = [str(tmp_path / "lora"), "--num-images", "2", "--steps", "2", "--class", "--out", "lora.png"]
    assert _run(work, argv, monkeypatch) == 0
    pipe = load_subject_pipeline(tmp_path / "lora")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, subject=False, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(_grid_pixels(work / "lora.png"), np.asarray(grid(images)))


# ------------------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["models/ldm", "--attr", "hair_color=3"],
            "--attr: not an option for a ldm model (models/ldm); its options: none",
        ),
        (["models/ldm", "--class"], "--subject/--class: not an option for a ldm model"),
        (["models/cartoon", "--class"], "its options: --attr, --guidance-scale"),
        (
            ["models/cartoon", "--attr", "hair_colour=3"],
            "unknown attribute 'hair_colour'; known: hair_color, face_color",
        ),
        (["models/cartoon", "--attr", "hair_color=10"], "hair_color takes a variant index 0..9"),
        (["models/cartoon", "--attr", "hair_color"], "expected NAME=INDEX"),
        (["models/dreambooth", "--class", "--guidance-scale", "2"], "does not apply to --class"),
        (["models/dreambooth_plain", "--class"], "--class: models/dreambooth_plain was trained without an identifier"),
        (["models/vae"], "is an autoencoder (PatchAutoencoderKL): it reconstructs images, it does not sample"),
        (["models/nothing"], "models/nothing: no such folder"),
        (["models/ldm", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_an_option_the_model_does_not_have_is_a_one_line_error(work, monkeypatch, capsys, argv, message):
    assert _run(work, [*argv, "--num-images", "2", "--out", "never.png"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipelines.sample: error: ") and "\n" not in err, err
    assert message in err
    assert not (work / "never.png").exists()


# ------------------------------------------------------------------------------ the README, as written


def readme_commands() -> list[str]:
    """The `python -m pipelines.sample ...` lines of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [
        line.split("#")[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("python -m pipelines.sample ")
    ]


def test_the_readme_commands_run_as_written(work, monkeypatch):
    """Each README command in the work directory; the cartoon one draws what the README's Python
    example draws (the same attributes, guidance, steps and seed), for 16 images."""
    commands = readme_commands()
    kinds = {shlex.split(c)[3]: c for c in commands}
    assert {"models/cartoon", "models/ldm", "models/dreambooth"} <= set(kinds), commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "pipelines.sample"]
        out = work / argv[argv.index("--out") + 1]
        out.unlink(missing_ok=True)
        assert _run(work, argv[3:], monkeypatch) == 0, command
        assert Image.open(out).size[0] > 0
    cartoon = shlex.split(kinds["models/cartoon"])
    pipe = CartoonDiffusionPipeline.from_pretrained(str(work / "models/cartoon"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        [{"hair_color": 3, "face_color": 0}] * 16,
        guidance_scale=2.0,
        num_inference_steps=20,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert np.array_equal(_grid_pixels(work / cartoon[cartoon.index("--out") + 1]), np.asarray(grid(images)))


@pytest.mark.filterwarnings("ignore:'pipelines.sample' found in sys.modules")  # runpy: the test imported it
def test_python_dash_m_runs_it_and_pipelines_stays_alone(work, monkeypatch):
    """The module's `__main__` entry (what `python -m` runs), and its import closure: nothing of tasks or flows."""
    import runpy

    from tasks.tracking.identity import stage_code

    monkeypatch.chdir(work)
    monkeypatch.setattr(
        sys, "argv", ["pipelines.sample", "models/ldm", "--num-images", "2", "--steps", "1", "--out", "module.png"]
    )
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("pipelines.sample", run_name="__main__")
    assert exited.value.code == 0 and (work / "module.png").is_file()
    closure = [p.relative_to(REPO).parts[0] for p in stage_code(["pipelines.sample"])]
    assert set(closure) == {"pipelines"}, closure
