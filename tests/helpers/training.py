"""The training engine's tiny test subject: a small unconditional UNet on in-memory blobs, its
DiffusionSpec (optionally with a sample grid), a TrainConfig with every key, and a one-call run."""

from __future__ import annotations

import torch

from tasks.training.config import GuardConfig, TrainConfig
from tasks.training.diffusion import DiffusionSpec
from tasks.training.engine import train
from tests.helpers.models import tiny_unet

N_IMAGES, BATCH = 32, 8


def tiny_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Smooth blobs, so a tiny UNet has structure to learn within a few steps.
    base = torch.rand(N_IMAGES, 3, 2, 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear", align_corners=False)


class TinyLoader:
    """Deterministic for (seed, epoch); shards the images by rank like the real loaders."""

    def __init__(self, images, epoch, rank, world):
        self.images = images[rank::world]
        self.order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(1000 + epoch))

    def __iter__(self):
        for i in range(0, len(self.order) - BATCH + 1, BATCH):
            yield self.images[self.order[i : i + BATCH]]


def tiny_spec(saved: dict) -> DiffusionSpec:
    images = tiny_images()

    def build():
        return tiny_unet()

    def save(net, scheduler, out_dir):
        net.save_pretrained(out_dir)
        saved["state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    return DiffusionSpec(
        build_model=build,
        make_loader=lambda e, r, w: TinyLoader(images, e, r, w),
        batches_per_epoch=N_IMAGES // BATCH,
        prepare_batch=lambda b, d: (b.to(d), None),
        predict=lambda m, x, t, c: m(x, t).sample,
        save=save,
    )


def train_config(**kw) -> TrainConfig:
    base = dict(
        seed=3,
        num_epochs=2,
        max_train_steps=None,
        gradient_accumulation_steps=1,
        mixed_precision="no",
        learning_rate=3e-3,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_weight_decay=1e-2,
        adam_epsilon=1e-8,
        lr_warmup_steps=2,
        max_grad_norm=1.0,
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        snr_gamma=None,
        use_ema=True,
        ema_decay=0.9,
        cond_drop_prob=0.0,
        checkpointing_steps=2,
        checkpoints_total_limit=2,
        samples_every_epochs=0,
        log_every_steps=1,
        guard=GuardConfig(spike_factor=3.0, patience=3, max_recoveries=3, lr_factor=0.5),
    )
    return TrainConfig(**{**base, **kw})


def train_tiny(tmp_path, name, cfg, **kw):
    saved: dict = {}
    summary = train(
        tiny_spec(saved),
        cfg,
        model_dir=str(tmp_path / name / "model"),
        checkpoint_dir=str(tmp_path / name / "ckpt"),
        live_dir=str(tmp_path / name / "live"),
        run_id="test",
        show_progress=False,
        **kw,
    )
    return summary, saved.get("state")


def tiny_grid_spec(saved: dict) -> DiffusionSpec:
    """The tiny spec with a sample grid: a deterministic image of the EMA weights."""
    spec = tiny_spec(saved)

    def grid(net, scheduler, epoch):
        from PIL import Image

        w = next(net.parameters()).detach().flatten()[:64]
        px = ((w - w.min()) / (w.max() - w.min() + 1e-12) * 255).to(torch.uint8).reshape(8, 8).numpy()
        return Image.fromarray(px).convert("RGB")

    spec.sample_grid = grid
    return spec
