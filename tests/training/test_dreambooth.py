"""DreamBooth: prior loss, identifier, class-sample cache, resume, LoRA round trip, bad input.

Everything runs on tiny models (a 1-level VAE, a 2-level UNet on 4x8x8 latents) built by tests/helpers/dreambooth.py."""

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from pipelines import LatentDiffusionPipeline
from pipelines.dreambooth import SubjectDiffusionPipeline, load_subject_pipeline, module_identity, with_identifier
from tasks.config.typed import ConfigError
from tasks.dreambooth.base import base_identity
from tasks.dreambooth.class_samples import sample_class
from tasks.dreambooth.config import TrainDreamboothConfig
from tasks.dreambooth.train import LatentSet, epoch_batches, prior_loss, run_training
from tasks.latent.vae import vae_identity
from tasks.shards.dataset import shard_name
from tasks.training.engine import StopTraining
from tests.helpers.dreambooth import class_cfg, db_params, make_base, make_latents
from tests.helpers.dreambooth import dreambooth_config as _config
from tests.helpers.dreambooth import train_dreambooth as _train

# ------------------------------------------------------------------------------------------ loss


def test_prior_loss_arithmetic_on_a_fixed_batch():
    pred = torch.zeros(5, 1, 2, 2)
    target = torch.cat([torch.full((2, 1, 2, 2), 1.0), torch.full((3, 1, 2, 2), 2.0)])  # 2 instances, 3 class
    loss, parts = prior_loss(pred, target, n_instance=2, weight=0.5)
    assert parts["instance_loss"].item() == pytest.approx(1.0)  # mean over the instance half only
    assert parts["prior_loss"].item() == pytest.approx(4.0)  # mean over the class half only
    assert loss.item() == pytest.approx(1.0 + 0.5 * 4.0)
    # Not the plain batch mean (that would weight the halves by their sizes: (2*1 + 3*4) / 5).
    assert loss.item() != pytest.approx((2 * 1 + 3 * 4) / 5)
    alone, parts = prior_loss(pred[:2], target[:2], n_instance=2, weight=None)
    assert alone.item() == pytest.approx(1.0) and "prior_loss" not in parts
    with pytest.raises(ValueError, match="class rows"):
        prior_loss(pred, target, n_instance=2, weight=None)


def test_batches_are_grouped_and_every_rank_sees_every_subject_photo(world):
    cfg = TrainDreamboothConfig.from_params(db_params())
    subject, klass = LatentSet(world / "subject"), LatentSet(world / "class")
    for rank in (0, 1):
        batches = epoch_batches(subject, klass, cfg, seed=0, epoch=0, rank=rank)
        assert len(batches) == 2  # 4 photos / 2 per batch
        for b in batches:
            assert b["labels"].tolist() == [1, 1, 0, 0] and b["n_instance"] == 2
            assert b["latent"].shape == (4, 4, 8, 8)
        # Each instance row is one of the subject photos' posteriors (mean + std*eps, std 0.1); over the
        # epoch every photo appears once on every rank.
        inst = torch.cat([b["latent"][:2] for b in batches]).numpy()
        nearest = {int(np.argmin(((subject.mean - z) ** 2).sum(axis=(1, 2, 3)))) for z in inst}
        assert nearest == {0, 1, 2, 3}
    again = epoch_batches(subject, klass, cfg, seed=0, epoch=0, rank=0)
    assert torch.equal(again[1]["latent"], epoch_batches(subject, klass, cfg, 0, 0, 0)[1]["latent"])


# ------------------------------------------------------------------------------------------ identifier


def test_zero_initialised_identifier_computes_what_the_base_computes(world):
    base = UNet2DModel.from_pretrained(str(world / "base" / "unet"))
    unet = with_identifier(base)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 50, 99])
    # One thread: with several, oneDNN/MKL may split a GEMM differently for differently aligned buffers
    # (measured here: on 2 threads the two UNets differ in the last bits, on one they are identical).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ref = base(x, t).sample
            for label in (0, 1):
                assert torch.equal(unet(x, t, class_labels=torch.full((3,), label)).sample, ref)
    finally:
        torch.set_num_threads(threads)
    assert unet.config.num_class_embeds == 2 and torch.count_nonzero(unet.class_embedding.weight) == 0
    with pytest.raises(ValueError, match="already has a class embedding"):
        with_identifier(unet)


def test_identifier_on_a_unet_built_in_code(tiny_unet):
    """A base made by the constructor (not loaded) gets its class embedding too."""
    base = tiny_unet(channels=4, widths=(16, 32), groups=8, seed=0)
    unet = with_identifier(base)
    assert unet.config.num_class_embeds == 2 and unet.class_embedding is not None


def test_identifier_guidance_extrapolates_from_class_to_subject(world):
    """guidance_scale s samples with eps_class + s * (eps_subject - eps_class): 1 is the subject label
    alone, and only identifier models asked for the subject accept another scale."""
    base = LatentDiffusionPipeline.from_pretrained(str(world / "base"))
    unet = with_identifier(base.unet)
    with torch.no_grad():
        unet.class_embedding.weight.copy_(torch.randn_like(unet.class_embedding.weight))
    pipe = SubjectDiffusionPipeline(unet=unet, vae=base.vae, scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def latents(**kw):
        return pipe(
            batch_size=2,
            num_inference_steps=1,
            latents=x,
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
            **kw,
        ).images

    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    with torch.no_grad():
        eps = {label: unet(x, t, class_labels=torch.full((2,), label)).sample for label in (0, 1)}
    expected = pipe.scheduler.step(
        eps[0] + 3.0 * (eps[1] - eps[0]), t, x, generator=torch.Generator().manual_seed(1)
    ).prev_sample
    assert torch.allclose(latents(guidance_scale=3.0), expected, atol=1e-5)
    assert torch.allclose(latents(guidance_scale=1.0), latents(), atol=0)
    assert not torch.allclose(latents(guidance_scale=3.0), latents(), atol=1e-4)
    with pytest.raises(ValueError, match="guidance_scale 2.0 needs subject=True"):
        latents(subject=False, guidance_scale=2.0)
    plain = SubjectDiffusionPipeline(unet=base.unet, vae=base.vae, scheduler=base.scheduler)
    with pytest.raises(ValueError, match="and a model with an identifier"):
        plain(batch_size=1, num_inference_steps=1, guidance_scale=2.0)


# ------------------------------------------------------------------------------------------ class samples


def test_class_samples_are_keyed_by_the_base_model(world, tmp_path):
    made = []
    manifest = sample_class(
        str(world / "base"),
        str(world / "class"),
        str(world / "grid.png"),
        class_cfg(),
        log=lambda *_: None,
        shard_callback=made.append,
    )
    assert made == []  # same base, same sampler: nothing sampled again
    assert manifest["counts"]["images"] == 5 and manifest["splits"]["train"]["shard_counts"] == [2, 2, 1]
    assert (world / "grid.png").is_file()
    base = LatentDiffusionPipeline.from_pretrained(str(world / "base"))
    assert manifest["base"]["identity"] == base_identity(base)["identity"]
    assert manifest["vae"]["identity"] == vae_identity(base.vae)

    # A new base model in the same place: every shard is sampled again, under the new identity.
    out = tmp_path / "class"
    import shutil

    shutil.copytree(world / "class", out)
    new_base = make_base(tmp_path / "base2", seed=1)
    made = []
    new = sample_class(
        str(new_base),
        str(out),
        str(tmp_path / "grid.png"),
        class_cfg(),
        log=lambda *_: None,
        shard_callback=made.append,
    )
    assert len(made) == 3 and new["base"]["identity"] != manifest["base"]["identity"]


def test_class_sampling_resumes_per_shard_after_a_kill(world, tmp_path):
    class Kill(Exception):
        pass

    def kill_after_first(name):
        raise Kill(name)

    out = tmp_path / "class"
    with pytest.raises(Kill):
        sample_class(
            str(world / "base"),
            str(out),
            str(tmp_path / "g.png"),
            class_cfg(),
            log=lambda *_: None,
            shard_callback=kill_after_first,
        )
    made = []
    sample_class(
        str(world / "base"),
        str(out),
        str(tmp_path / "g.png"),
        class_cfg(),
        log=lambda *_: None,
        shard_callback=made.append,
    )
    assert made == [shard_name("train", 1), shard_name("train", 2)]  # the finished shard was kept
    for name in (shard_name("train", i) for i in range(3)):  # same bytes as an uninterrupted run
        assert (out / name).read_bytes() == (world / "class" / name).read_bytes()


# ------------------------------------------------------------------------------------------ training


def test_mismatched_identities_are_a_clear_error(world, tmp_path):
    make_latents(tmp_path / "subject", "0123456789abcdef01234567", 4, seed=1)
    with pytest.raises(ValueError, match="encoded by VAE 0123456789abcdef01234567.*decodes with VAE"):
        run_training(
            str(tmp_path / "subject"),
            str(world / "class"),
            str(world / "base"),
            str(tmp_path / "m"),
            str(tmp_path / "c"),
            str(tmp_path / "l"),
            str(tmp_path / "x.json"),
            _config(db_params()),
        )
    other = LatentDiffusionPipeline.from_pretrained(str(world / "base"))  # same VAE, another UNet
    with torch.no_grad():
        next(other.unet.parameters()).add_(0.01)
    other.save_pretrained(tmp_path / "other")
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="sampled from base model .* re-run sample_class"):
        run_training(
            str(world / "subject"),
            str(world / "class"),
            str(other),
            str(tmp_path / "m"),
            str(tmp_path / "c"),
            str(tmp_path / "l"),
            str(tmp_path / "x.json"),
            _config(db_params()),
        )


def test_bad_params_are_config_errors():
    with pytest.raises(ConfigError, match="method"):
        TrainDreamboothConfig.from_params(db_params(method="dora"))
    with pytest.raises(ConfigError, match="identifier: true needs prior_preservation"):
        TrainDreamboothConfig.from_params(db_params(prior_preservation=False))
    with pytest.raises(ConfigError, match="unknown key"):
        TrainDreamboothConfig.from_params({**db_params(), "steps": 3})
    samples = {**db_params()["samples"], "guidance_scale": 0.5}
    with pytest.raises(ConfigError, match="guidance_scale must be >= 1"):
        TrainDreamboothConfig.from_params(db_params(samples=samples))


def test_training_logs_both_losses_and_resumes_exactly(world, tmp_path):
    params = db_params()
    ref = _train(world, tmp_path / "ref", params)
    assert ref["steps"] == 6
    metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert metrics["final_instance_loss"] > 0 and metrics["final_prior_loss"] > 0
    rows = (tmp_path / "ref/live/plots/metrics/train/prior_loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 6

    def kill_at_3(step):
        if step == 3:
            raise StopTraining

    with pytest.raises(StopTraining):
        _train(world, tmp_path / "cut", params, step_callback=kill_at_3)
    resumed = _train(world, tmp_path / "cut", params)
    assert (resumed.get("run") or resumed)["resumed_from_step"] == 2  # the engine nests run facts under "run"
    a = SubjectDiffusionPipeline.from_pretrained(str(tmp_path / "ref" / "model")).unet.state_dict()
    b = SubjectDiffusionPipeline.from_pretrained(str(tmp_path / "cut" / "model")).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.count_nonzero(a["class_embedding.weight"]) > 0  # the identifier learnt something


def test_lora_saves_only_the_adapter_and_loads_onto_its_base(world, tmp_path):
    params = db_params(method="lora", training={"num_epochs": 2, "learning_rate": 1e-2})
    _train(world, tmp_path, params)
    model = tmp_path / "model"
    assert not (model / "model_index.json").exists() and (model / "adapter_model.safetensors").is_file()
    base_size = sum(p.stat().st_size for p in (world / "base" / "unet").iterdir())
    assert (model / "adapter_model.safetensors").stat().st_size < base_size / 2
    pipe = load_subject_pipeline(model, base_dir=world / "base")
    assert pipe.has_identifier
    base = LatentDiffusionPipeline.from_pretrained(str(world / "base"))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 60])
    with torch.no_grad():
        tuned = pipe.unet(x, t, class_labels=torch.tensor([1, 1])).sample
        assert not torch.allclose(tuned, base.unet(x, t).sample)  # the adapter changed the model
    # Loaded twice: identical outputs; sampling works for both labels.
    again = load_subject_pipeline(model, base_dir=world / "base")
    with torch.no_grad():
        assert torch.equal(again.unet(x, t, class_labels=torch.tensor([1, 1])).sample, tuned)
    out = pipe(
        batch_size=1, subject=False, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert out.shape == (1, 8, 8, 3)
    # An adapter refuses a base whose weights changed.
    with pytest.raises(ValueError, match="adapter for base UNet"):
        load_subject_pipeline(model, base_dir=make_base(tmp_path / "other", seed=3))


def test_lora_adapter_finds_its_base_from_any_cwd_and_after_a_move(world, tmp_path, monkeypatch):
    """Recorded relative to the adapter (tried first) and absolute; the identity picks the right one."""
    import shutil

    from peft import inject_adapter_in_model

    from tasks.dreambooth.train import lora_config, save_adapter

    cfg = _config(db_params(method="lora"))
    base = LatentDiffusionPipeline.from_pretrained(str(world / "base"))
    unet = inject_adapter_in_model(lora_config(cfg), with_identifier(base.unet))
    project = tmp_path / "project"
    shutil.copytree(world / "base", project / "models" / "ldm")
    monkeypatch.chdir(project)
    save_adapter(
        unet, cfg, "models/ldm", module_identity(base.unet), "models/dreambooth"
    )  # paths as the stage gives them
    record = json.loads((project / "models/dreambooth/dreambooth_adapter.json").read_text())
    assert record["base_dir"] == str(project / "models/ldm") and record["base_dir_relative"] == "../ldm"
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])

    def out(model_dir):
        with torch.no_grad():
            return load_subject_pipeline(model_dir).unet(x, t, class_labels=torch.tensor([1])).sample

    want = out("models/dreambooth")
    monkeypatch.chdir(tmp_path)  # another cwd
    assert torch.equal(out(project / "models/dreambooth"), want)
    shutil.copytree(project / "models/dreambooth", tmp_path / "alone")  # the adapter alone: the absolute path
    assert torch.equal(out(tmp_path / "alone"), want)
    shutil.move(project, tmp_path / "moved")  # the project moved: the absolute path is gone, the relative one holds
    assert torch.equal(out(tmp_path / "moved/models/dreambooth"), want)
    make_base(tmp_path / "moved/models/other", seed=3)  # a wrong base at the relative path, none at the absolute
    shutil.rmtree(tmp_path / "moved/models/ldm")
    (tmp_path / "moved/models/other").rename(tmp_path / "moved/models/ldm")
    with pytest.raises(ValueError, match="adapter for base UNet .* holds UNet"):
        out(tmp_path / "moved/models/dreambooth")
    with pytest.raises(FileNotFoundError, match="base model is missing"):
        out(tmp_path / "alone")


def test_full_finetune_pipeline_round_trip_and_subject_choice(world, tmp_path):
    _train(world, tmp_path, db_params(identifier=False, training={"num_epochs": 1}))
    pipe = load_subject_pipeline(tmp_path / "model")
    assert isinstance(pipe, SubjectDiffusionPipeline) and not pipe.has_identifier
    with pytest.raises(ValueError, match="subject=False needs"):
        pipe(batch_size=1, subject=False, num_inference_steps=1)
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "again")
    back = load_subject_pipeline(tmp_path / "again")
    assert type(back.scheduler).__name__ == "DDIMScheduler"
    assert module_identity(back.unet) == module_identity(pipe.unet)


def test_too_few_subject_photos_is_an_error_naming_the_rejected_ones():
    from tasks.dreambooth.subject import check_enough_photos

    manifest = {
        "counts": {"written": 2},
        "params": {"min_photos": 3},
        "rejected": [
            {"file": "me_03.jpg", "reason": "no face found"},
            {"file": "me_07.jpg", "reason": "face smaller than min_face_size (31 px < 40)"},
        ],
    }
    with pytest.raises(
        ValueError,
        match=r"only 2 subject photo\(s\).*min_photos=3.*me_03.jpg: no face found.*"
        r"me_07.jpg: face smaller",
    ):
        check_enough_photos(manifest, "data/faces/subject")
    check_enough_photos({**manifest, "counts": {"written": 3}}, "data/faces/subject")  # enough: no error


def test_the_identifier_trains_at_its_own_rate(tiny_unet):
    from tasks.dreambooth.train import identifier_groups

    unet = with_identifier(tiny_unet(channels=4, groups=8))
    groups = identifier_groups(unet, 5e-4, 1e-2)
    assert [g["lr"] for g in groups] == [5e-4, 1e-2]
    assert groups[1]["params"] == [unet.class_embedding.weight]
    assert sum(len(g["params"]) for g in groups) == len(list(unet.parameters()))
    # Without an identifier there is one group.
    assert len(identifier_groups(tiny_unet(channels=4, groups=8), 5e-4, 1e-2)) == 1
