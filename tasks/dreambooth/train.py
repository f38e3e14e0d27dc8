"""Stage train_dreambooth: fine-tune the base UNet on the subject's latents, with prior preservation
from the class samples, on the shared training engine (tasks/training).

Batches. Every micro-batch is [instance_batch_size subject latents; class_batch_size class latents]
in that order (the grouping the prior loss splits on). Every process draws from all subject photos
(there may be only 5: sharding them across ranks would starve some), in its own order, seeded by
(seed, epoch, rank); class latents likewise. An epoch is one pass over the subject photos. z = mean +
std * eps with eps seeded by (seed, epoch, rank, batch), so a resumed run sees the batches an
uninterrupted one would (the engine's exact-resume contract).

Loss. instance MSE + prior_loss_weight * class MSE, each the mean over its own half of the batch
(`prior_loss`); both are logged as dvclive curves (train/instance_loss, train/prior_loss).

Identifier. `identifier: true` gives the UNet a zero-initialised 2-row class embedding
(pipelines/dreambooth.py `with_identifier`): label 1 for subject latents, 0 for class latents, and at
step 0 the model computes exactly what the base computes.

LoRA. `method: lora` injects peft LoRA layers (`inject_adapter_in_model`) into the modules named by
`lora.target_modules`, trains only those (and the identifier's embedding), and saves only them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.utils import make_image_grid

from pipelines import make_scheduler
from pipelines.dreambooth import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    CLASS_LABEL,
    SUBJECT_LABEL,
    SubjectDiffusionPipeline,
    base_reference,
    with_identifier,
)
from pipelines.folders import ADAPTER_RECORD
from pipelines.outputs import to_output
from pipelines.portable import save_portable
from tasks.dreambooth.base import base_identity, check_compatible, load_base
from tasks.dreambooth.config import TrainDreamboothConfig
from tasks.latent.encode import iter_latents
from tasks.processes.launch import config_job_main, run_or_launch
from tasks.reporting.model_card import last_grid, write_model_card
from tasks.reporting.timings import write_metrics
from tasks.shards.dataset import read_manifest, write_json_atomic
from tasks.tracking.hashing import derive_seed
from tasks.tracking.identity import data_identity, identity
from tasks.training.config import TrainConfig
from tasks.training.diffusion import DiffusionSpec
from tasks.training.engine import mean_of_last_steps, train

# ---------------------------------------------------------------------------------------- data


class LatentSet:
    """Every latent of a latent dataset, in memory (subject photos and class samples are few)."""

    def __init__(self, shard_dir: str | Path):
        manifest = read_manifest(shard_dir)
        mean, std, mean_f, std_f, keys = [], [], [], [], []
        for name in manifest["splits"]["train"]["shards"]:
            for s in iter_latents(Path(shard_dir) / name):
                keys.append(s["__key__"])
                mean.append(s["mean.npy"])
                std.append(s["std.npy"])
                if "mean_flip.npy" in s:
                    mean_f.append(s["mean_flip.npy"])
                    std_f.append(s["std_flip.npy"])
        if not keys:
            raise ValueError(f"{shard_dir} holds no latents")
        self.keys = keys
        self.mean, self.std = np.stack(mean).astype(np.float32), np.stack(std).astype(np.float32)
        self.has_flip = len(mean_f) == len(keys)
        if self.has_flip:
            self.mean_f, self.std_f = np.stack(mean_f).astype(np.float32), np.stack(std_f).astype(np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def draw(self, idx: np.ndarray, rng: np.random.Generator, flip_prob: float) -> np.ndarray:
        """z = mean + std * eps for the rows `idx` (each flipped with `flip_prob` when flips are stored)."""
        mean, std = self.mean[idx].copy(), self.std[idx].copy()
        if self.has_flip:
            flip = rng.random(len(idx)) < flip_prob
            mean[flip], std[flip] = self.mean_f[idx[flip]], self.std_f[idx[flip]]
        return mean + std * rng.standard_normal(mean.shape, dtype=np.float32)


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def _cycled(perm: np.ndarray, start: int, n: int) -> np.ndarray:
    return perm[np.arange(start, start + n) % len(perm)]


def epoch_batches(
    subject: LatentSet, klass: LatentSet | None, cfg: TrainDreamboothConfig, seed: int, epoch: int, rank: int
) -> list[dict]:
    """The micro-batches of one epoch on one process: dicts with `latent` (B, C, h, w) [instance; class],
    `labels` (B,) (1 subject, 0 class) and `n_instance`."""
    ib = cfg.instance_batch_size
    cb = cfg.class_batch_size if cfg.prior_preservation else 0
    order = _rng(seed, epoch, rank, "subject").permutation(len(subject))
    class_order = _rng(seed, epoch, rank, "class").permutation(len(klass)) if cb else None
    out = []
    for b in range(batches_per_epoch(len(subject), ib)):
        rng = _rng(seed, epoch, rank, "eps", b)
        parts = [subject.draw(_cycled(order, b * ib, ib), rng, cfg.flip_prob)]
        if cb:
            parts.append(klass.draw(_cycled(class_order, b * cb, cb), rng, 0.0))
        labels = np.array([SUBJECT_LABEL] * ib + [CLASS_LABEL] * cb)
        out.append(
            {"latent": torch.from_numpy(np.concatenate(parts)), "labels": torch.from_numpy(labels), "n_instance": ib}
        )
    return out


def batches_per_epoch(num_subject: int, instance_batch_size: int) -> int:
    """One epoch = one pass over the subject photos (at least one batch, cycling when they are fewer)."""
    return max(1, num_subject // instance_batch_size)


def prior_loss(pred: torch.Tensor, target: torch.Tensor, n_instance: int, weight: float | None):
    """(instance MSE + weight * class MSE, {instance_loss, prior_loss}); rows [:n_instance] are the subject,
    the rest class samples. weight None: no prior preservation (the batch must hold instances only)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    instance = F.mse_loss(pred[:n_instance], target[:n_instance])
    if weight is None:
        if pred.shape[0] != n_instance:
            raise ValueError("class rows in a batch without prior preservation")
        return instance, {"instance_loss": instance.detach()}
    prior = F.mse_loss(pred[n_instance:], target[n_instance:])
    return instance + weight * prior, {"instance_loss": instance.detach(), "prior_loss": prior.detach()}


# ---------------------------------------------------------------------------------------- model


def build_unet(base_unet: UNet2DModel, cfg: TrainDreamboothConfig) -> UNet2DModel:
    """A trainable copy of the base UNet: with the identifier's zero embedding, and LoRA layers when
    method is lora (then only those and the embedding train)."""
    unet = UNet2DModel.from_config(base_unet.config)
    unet.load_state_dict(base_unet.state_dict())
    if cfg.identifier:
        unet = with_identifier(unet)
    if cfg.method == "lora":
        from peft import inject_adapter_in_model

        unet.requires_grad_(False)
        unet = inject_adapter_in_model(lora_config(cfg), unet)
        for name, p in unet.named_parameters():
            p.requires_grad_("lora_" in name or name.startswith("class_embedding."))
    return unet.train()


def identifier_groups(unet: UNet2DModel, lr: float, identifier_lr: float) -> list[dict]:
    """The identifier's embedding at its own rate, everything else at the engine's. Why: from zero,
    at the UNet's rate (5e-4) the two labels still drew the same faces after 300 steps; the label
    has to move the time embedding as far as a new concept does (textual inversion's rates are
    10-100x a fine-tune's for the same reason)."""
    ident, rest = [], []
    for name, p in unet.named_parameters():
        (ident if name.startswith("class_embedding.") else rest).append(p)
    return [{"params": rest, "lr": lr}] + ([{"params": ident, "lr": identifier_lr}] if ident else [])


def lora_settings(cfg: TrainDreamboothConfig) -> dict:
    return {
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "target_modules": list(cfg.lora.target_modules),
        "lora_dropout": 0.0,
        "init_lora_weights": True,
    }


def lora_config(cfg: TrainDreamboothConfig):
    from peft import LoraConfig

    return LoraConfig(**lora_settings(cfg))


def save_adapter(unet: UNet2DModel, cfg: TrainDreamboothConfig, base_dir: str, base_unet_id: str, out_dir: str) -> None:
    """Only what training changed: the LoRA weights (and the identifier's embedding), with a record of the base."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    if cfg.identifier:
        state.update(
            {f"identifier.{k}": v.detach().cpu().contiguous() for k, v in unet.class_embedding.state_dict().items()}
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / ADAPTER_FILE))
    write_json_atomic(out / ADAPTER_CONFIG, lora_settings(cfg))
    write_json_atomic(
        out / ADAPTER_RECORD,
        {**base_reference(base_dir, out, base_unet_id), "identifier": cfg.identifier, "method": "lora"},
    )


# ---------------------------------------------------------------------------------------- spec


def check_schedule(train_cfg: TrainConfig, base_scheduler) -> None:
    """Fine-tuning must add noise the way the base model was trained to remove it."""
    ours = train_cfg.noise_scheduler().config
    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
    diff = {k: (ours[k], base_scheduler.config[k]) for k in keys if ours[k] != base_scheduler.config[k]}
    if diff:
        raise ValueError(
            f"train_dreambooth.training's noise schedule differs from the base model's "
            f"(ours, base): {diff}; set them as in train_ldm.training"
        )


def dreambooth_spec(
    subject_dir: str, class_dir: str | None, base_dir: str, cfg: TrainDreamboothConfig, train_cfg: TrainConfig
) -> tuple[DiffusionSpec, dict]:
    base = load_base(base_dir)
    ident = base_identity(base)
    check_compatible(ident, base_dir, subject_dir, class_dir if cfg.prior_preservation else None)
    check_schedule(train_cfg, base.scheduler)
    subject = LatentSet(subject_dir)
    if tuple(subject.mean.shape[1:]) != tuple(base.latent_shape):  # e.g. 64 px photos for a 256 px base
        raise ValueError(
            f"{subject_dir} latents are {list(subject.mean.shape[1:])}, but the base model {base_dir} "
            f"denoises {list(base.latent_shape)}: align the subject at the base's resolution "
            f"(prepare_subject) and re-run encode_subject"
        )
    klass = LatentSet(class_dir) if cfg.prior_preservation else None
    scale = float(base.vae.config.scaling_factor)
    weight = cfg.prior_loss_weight if cfg.prior_preservation else None
    vae = base.vae

    def prepare(batch, device):
        labels = batch["labels"].to(device) if cfg.identifier else None
        return batch["latent"].to(device) * scale, {"labels": labels, "n_instance": batch["n_instance"]}

    def predict(model, x, t, cond):
        return model(x, t, class_labels=cond["labels"]).sample

    def sample_grid(unet, noise_scheduler, epoch: int):
        """Top row: subject (label 1, guided from label 0 by samples.guidance_scale); bottom row:
        class (label 0), or without an identifier the
        first class samples as they were drawn from the base; same seeds across epochs."""
        pipe = SubjectDiffusionPipeline(
            unet=unet, vae=vae.to(unet.device), scheduler=make_scheduler(cfg.samples.scheduler, noise_scheduler.config)
        )
        pipe.set_progress_bar_config(disable=True)
        n, steps = cfg.samples.num_images, cfg.samples.num_inference_steps
        guidance = {"guidance_scale": cfg.samples.guidance_scale} if cfg.identifier else {}
        rows = [
            pipe(
                batch_size=n,
                num_inference_steps=steps,
                output_type="pil",
                **guidance,
                generator=torch.Generator(device=unet.device).manual_seed(cfg.samples.seed),
            ).images
        ]
        if cfg.identifier:
            rows.append(
                pipe(
                    batch_size=n,
                    subject=False,
                    num_inference_steps=steps,
                    output_type="pil",
                    generator=torch.Generator(device=unet.device).manual_seed(cfg.samples.seed),
                ).images
            )
        elif klass is not None:
            z = torch.from_numpy(klass.mean[:n]).to(unet.device) * scale
            with torch.no_grad():
                rows.append(to_output(pipe.decode_latents(z), "pil", True).images)
        return make_image_grid([im for row in rows for im in row], rows=len(rows), cols=n)

    def save(unet, noise_scheduler, out_dir: str):
        if cfg.method == "lora":
            save_adapter(unet, cfg, base_dir, ident["unet"], out_dir)
        else:
            save_portable(SubjectDiffusionPipeline(unet=unet, vae=vae.to("cpu"), scheduler=base.scheduler), out_dir)

    spec = DiffusionSpec(
        build_model=lambda: build_unet(base.unet, cfg),
        make_loader=lambda epoch, rank, world: epoch_batches(subject, klass, cfg, train_cfg.seed, epoch, rank),
        batches_per_epoch=batches_per_epoch(len(subject), cfg.instance_batch_size),
        prepare_batch=prepare,
        predict=predict,
        save=save,
        sample_grid=sample_grid if cfg.samples.num_images > 0 else None,
        loss=lambda pred, target, cond: prior_loss(pred, target, cond["n_instance"], weight),
        param_groups=lambda unet, lr: identifier_groups(unet, lr, cfg.identifier_learning_rate),
    )
    info = {"base": ident, "subject_photos": len(subject), "class_samples": len(klass) if klass else 0}
    return spec, info


def run_training(
    subject_dir: str,
    class_dir: str,
    base_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    config: TrainDreamboothConfig,
    step_callback=None,
    show_progress: bool = True,
) -> dict:
    """Fine-tune in this process (one of possibly several under `accelerate launch`)."""
    cfg, train_cfg = config, config.training
    t0 = time.perf_counter()
    spec, info = dreambooth_spec(subject_dir, class_dir, base_dir, cfg, train_cfg)
    data_ids = [data_identity(subject_dir)] + ([data_identity(class_dir)] if cfg.prior_preservation else [])
    run_id = identity(cfg.to_dict(), info["base"], data_ids)
    summary = train(
        spec,
        cfg=train_cfg,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        run_id=run_id,
        step_callback=step_callback,
        show_progress=show_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = {
            "method": cfg.method,
            "identifier": cfg.identifier,
            "prior_preservation": cfg.prior_preservation,
            "prior_loss_weight": cfg.prior_loss_weight,
            "base_identity": info["base"]["identity"],
            "subject_photos": info["subject_photos"],
            "class_samples": info["class_samples"],
            **_last_losses(Path(live_dir), summary),
            **{k: v for k, v in summary.items() if k != "run"},
        }
        timings = {**summary["run"], "stage_seconds": time.perf_counter() - t0}  # not quality metrics
        write_metrics(metrics_path, metrics, timings)
        write_model_card(
            model_dir,
            stage="train_dreambooth",
            params=cfg.to_dict(),
            metrics_path=metrics_path,
            data_dirs=[subject_dir] + ([class_dir] if cfg.prior_preservation else []),
            sample_grid=last_grid(live_dir),
            base_model=base_dir,
        )
    return summary


def _last_losses(live_dir: Path, summary: dict) -> dict:
    """The instance and prior losses over the last epoch, as the engine's `final_loss` (dvclive TSVs)."""
    steps_per_epoch = max(1, summary["steps"] // max(1, summary["epochs"]))
    return {
        f"final_{name}": mean_of_last_steps(
            live_dir / "plots" / "metrics" / "train" / f"{name}.tsv", summary["steps"], steps_per_epoch
        )
        for name in ("instance_loss", "prior_loss")
    }


def train_dreambooth(
    subject_dir: str,
    class_dir: str,
    base_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    config: TrainDreamboothConfig,
) -> dict | None:
    """Fine-tune here, or in `num_processes` processes under `accelerate launch`; returns this
    process's summary (None when launched: the processes write the metrics)."""
    paths = dict(
        subject_dir=subject_dir,
        class_dir=class_dir,
        base_dir=base_dir,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        metrics_path=metrics_path,
    )
    return run_or_launch(
        "tasks.dreambooth.train", run_training, paths, config, Path(checkpoint_dir).with_suffix(".job.json")
    )


if __name__ == "__main__":  # one process of `accelerate launch -m tasks.dreambooth.train --job job.json`
    config_job_main(run_training, TrainDreamboothConfig, "train_dreambooth")
