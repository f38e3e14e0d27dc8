"""The diffusion training engine shared by the cartoon model, the latent model and DreamBooth.

What differs between those models comes in a `TrainSpec` (a model factory, a loader factory, a
"batch -> (clean x0, condition)" adapter, the forward call, how to null a condition, how to save);
everything else lives here, in one loop read top to bottom:

  setup       accelerate (devices, mixed precision, gradient accumulation, processes), seeds, and the
              checks of the inputs (before anything on disk is touched)
  model       AdamW, cosine schedule with warmup, EMA of the weights, memory anatomy
  resume      the newest checkpoint of the same run (params, data and code fingerprint), counters, RNG
              and the dvclive curves and grids so far included; checkpoints of another run deleted
  loop        epoch loaders re-created from (seed, epoch); a resumed epoch skips its consumed batches
  outputs     dvclive curves every `log_every_steps`, a sample grid per epoch, checkpoints, the EMA model

The step loop never waits for the device between logging steps: losses stay device tensors, summed
until a logging step (every `log_every_steps`, every checkpoint, the last step) gathers them and
brings their mean to the host once. On a GPU the host then queues the next steps while the device
works; a `.item()` per step would drain that queue every step. tests/test_engine_syncs.py counts
the host syncs to keep it so.

Resume is exact: a checkpoint holds the model, optimizer, LR schedule, EMA and the step/epoch/batch
counters (all through `accelerator.save_state`), taken only at optimizer-step boundaries; noise,
timesteps and condition dropout are seeded per micro-batch from (seed, rank, position); the loader
for an epoch is deterministic, so skipping the batches the checkpoint had already consumed puts the
run where an uninterrupted one would be.

Only the same code resumes: the run identity is the caller's `run_id` (params, data) plus the
identity of the stage's code (tasks/common/identity.py). A checkpoint of the
same run written by another number of processes or another accumulation setting is refused (its
batch order would differ). Each checkpoint also keeps a copy of the dvclive folder as it was at that
step, so a run resumed at its end (`dvc repro -f`) restores the same curves and grids and saves the
same model: the dvclive outputs need not be `persist`.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tasks.common.identity import code_identity, identity
from tasks.common.log import get_logger
from tasks.training.config import TrainConfig
from tasks.training.memory import measured_adam_state_mb, memory_anatomy

CHECKPOINT_PREFIX = "checkpoint-"
FINGERPRINT = "fingerprint.json"
PREVIOUS_RUN = ".previous-run"  # another run's state, kept until this run ends
LIVE_COPY = "dvclive"  # inside a checkpoint: the dvclive folder at that step


class ResumeError(RuntimeError):
    """A checkpoint of this run that cannot be resumed as configured (says what to do instead)."""


@dataclass
class TrainSpec:
    """What one model brings to the engine. Every callable is plain and picklable-free."""

    build_model: Callable[[], nn.Module]
    """Returns the module to train, freshly initialised (the engine seeds torch first)."""
    make_loader: Callable[[int, int, int], Iterable]
    """(epoch, rank, world_size) -> this process's batches for the epoch; deterministic."""
    batches_per_epoch: int
    """Micro-batches each process gets per epoch (every rank the same)."""
    prepare_batch: Callable[[Any, torch.device], tuple[torch.Tensor, Any]]
    """(batch, device) -> (clean target x0 (B, C, H, W), condition or None)."""
    predict: Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]
    """(model, noisy x_t, timesteps, condition) -> the model's prediction (noise or v)."""
    save: Callable[[nn.Module, Any, str], None]
    """(model with EMA weights, noise scheduler, out_dir) -> writes the final model."""
    null_condition: Callable[[Any, torch.Tensor], Any] | None = None
    """(condition, drop mask (B,) bool) -> condition with masked rows set to the null condition."""
    sample_grid: Callable[[nn.Module, Any, int], Any] | None = None
    """(model with EMA weights, noise scheduler, epoch) -> a PIL image logged per epoch."""
    loss: Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    """(prediction, target, condition), both float32 -> (loss to minimise, {name: detached scalar} logged
    as `train/<name>` curves). None: plain MSE over the batch."""
    param_groups: Callable[[nn.Module, float], list[dict[str, Any]]] | None = None
    """(model, learning_rate) -> AdamW parameter groups (e.g. new embeddings at their own rate; the
    LR schedule scales every group alike). None: one group of every parameter."""


def noise_seed(seed: int, rank: int, micro_batch: int) -> int:
    """The seed of one micro-batch's noise, timesteps and dropout mask: a function of where the run
    is, not of a generator's history, so a resumed run draws the same on every rank."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + micro_batch) % (2**63 - 1)


class _Counters:
    """Engine state saved with every checkpoint (via accelerate's custom-state mechanism)."""

    def __init__(self):
        self.global_step = 0   # optimizer steps done
        self.epoch = 0         # epoch in progress
        self.batch_in_epoch = 0  # micro-batches of that epoch consumed

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.global_step, self.epoch = int(state["global_step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


class StopTraining(Exception):
    """Raised by a step callback to end the run at once, as a kill would (tests use it)."""


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _read_marker(checkpoint_dir: Path) -> dict:
    try:
        return json.loads((checkpoint_dir / FINGERPRINT).read_text())
    except (OSError, ValueError):
        return {}


def _check_layout(marker: dict, layout: dict, checkpoint_dir: Path) -> None:
    """Refuse checkpoints of this run written with another process count or accumulation."""
    if not list_checkpoints(checkpoint_dir):
        return
    diff = {k: (marker.get(k), v) for k, v in layout.items() if marker.get(k) != v}
    if diff:
        said = ", ".join(f"{k} {old} (now {new})" for k, (old, new) in sorted(diff.items()))
        raise ResumeError(
            f"{checkpoint_dir} holds checkpoints of this run written with {said}: resuming would not continue "
            f"the same batch order. Run with the settings it was written with, or delete {checkpoint_dir} "
            "to start afresh.")


def _prepare_checkpoint_dir(checkpoint_dir: Path, live_dir: Path, run_key: str, layout: dict, is_main: bool,
                            log) -> None:
    """Keep checkpoints only if this code wrote them for this run (same key); set others aside.

    Another run's checkpoints, marker and dvclive folder move to `<checkpoint_dir>/.previous-run`,
    where they stay until this run finishes (`_drop_previous`) or is put back if it fails before its
    first checkpoint (`_put_back_previous`): a run on bad data loses nothing of the last good one. A
    `.previous-run` that is already there holds the last finished run; what stands beside it then
    belongs to an unfinished one and is deleted. Every process checks (so all raise together); only
    the main process moves and writes."""
    marker = _read_marker(checkpoint_dir)
    if marker.get("run_id") == run_key:
        _check_layout(marker, layout, checkpoint_dir)
    if not is_main:
        return
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if marker.get("run_id") != run_key:
        stale = list_checkpoints(checkpoint_dir)
        if stale:
            log.warning(f"{checkpoint_dir}: {len(stale)} checkpoint(s) of another run (code, params or data "
                        f"changed); starting afresh, the old ones kept in {PREVIOUS_RUN} until this run ends")
        previous = checkpoint_dir / PREVIOUS_RUN
        keep = not previous.is_dir()
        previous.mkdir(exist_ok=True)
        for p in [*stale, checkpoint_dir / FINGERPRINT, live_dir]:
            if keep and p.exists():
                shutil.move(p, previous / (LIVE_COPY if p == live_dir else p.name))
            else:
                _remove(p)
        (checkpoint_dir / FINGERPRINT).write_text(json.dumps({"run_id": run_key, **layout}) + "\n")
    for tmp in checkpoint_dir.glob("*.tmp"):  # a save cut short by a kill
        shutil.rmtree(tmp, ignore_errors=True)


def _put_back_previous(checkpoint_dir: Path, live_dir: Path) -> None:
    """Undo `_prepare_checkpoint_dir`'s setting aside, for a run that failed before any checkpoint."""
    previous = checkpoint_dir / PREVIOUS_RUN
    if not previous.is_dir() or list_checkpoints(checkpoint_dir):
        return
    for p in (checkpoint_dir / FINGERPRINT, live_dir):
        _remove(p)
    for p in previous.iterdir():
        shutil.move(p, live_dir if p.name == LIVE_COPY else checkpoint_dir / p.name)
    previous.rmdir()


def _remove(path: Path) -> None:
    """Delete a file or a folder; nothing when it is not there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _drop_previous(checkpoint_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir / PREVIOUS_RUN, ignore_errors=True)


def _restore_live(checkpoint: Path, live_dir: Path) -> None:
    """The dvclive folder as it was when `checkpoint` was taken (rows and grids after it dropped)."""
    copy = checkpoint / LIVE_COPY
    if live_dir.exists():
        shutil.rmtree(live_dir)
    if copy.is_dir():
        shutil.copytree(copy, live_dir)


def _to_device_async(batch: Any, device: torch.device) -> Any:
    """The batch (tensors, or dicts, lists and tuples of them) on `device`, each tensor copied from
    pinned host memory without blocking the host (CUDA only); the spec's own `.to(device)` is then a no-op."""
    if isinstance(batch, torch.Tensor):
        if batch.device.type != "cpu":
            return batch.to(device, non_blocking=True)
        return (batch if batch.is_pinned() else batch.pin_memory()).to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device_async(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device_async(v, device) for v in batch)
    return batch


def mean_of_last_steps(tsv: Path, last_step: int, n: int) -> float | None:
    """The mean over steps (last_step - n, last_step] of a dvclive curve of the engine (`train/loss.tsv`,
    a spec's `train/<part>.tsv`), whose rows are means over the steps since the row before: each row
    weighted by its steps inside that range."""
    if not tsv.is_file():
        return None
    header, *rows = tsv.read_text().splitlines()
    at_step, at_value = header.split("\t").index("step"), header.split("\t").index(tsv.stem)
    start, prev, total, count = last_step - n, 0, 0.0, 0
    for row in rows:
        step, value = int(row.split("\t")[at_step]), float(row.split("\t")[at_value])
        weight = step - max(prev, start)
        if weight > 0:
            total, count = total + value * weight, count + weight
        prev = step
    return total / count if count else None


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
                   cfg: TrainConfig) -> torch.Tensor:
    """MSE, or with `snr_gamma` the Min-SNR weighted MSE: each sample's loss scaled by
    min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), so the nearly clean timesteps, easy and
    many, stop dominating the gradient."""
    if cfg.snr_gamma is None:
        return F.mse_loss(pred, target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weight = snr.clamp(max=cfg.snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
    per_sample = (pred - target).square().flatten(1).mean(1)
    return (per_sample * weight).mean()


def train(spec: TrainSpec, cfg: TrainConfig, *, model_dir: str, checkpoint_dir: str, live_dir: str,
          run_id: str, step_callback: Callable[[int], None] | None = None, show_progress: bool = True) -> dict:
    """Train `spec`'s model under `cfg`; returns the summary metrics (also logged to dvclive).

    `run_id` identifies the run's params and data; the engine adds the code's identity. Checkpoints
    of another run are discarded; those of this run with another process count or accumulation refused.
    `step_callback(global_step)` runs after every optimizer step (and its checkpoint, if any).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from dvclive import Live
    from tqdm.auto import tqdm

    log = get_logger()
    if spec.loss is not None and cfg.snr_gamma is not None:
        raise ValueError("training.snr_gamma weights the engine's own MSE; this stage has a loss of its own "
                         "(e.g. DreamBooth's prior-preservation loss): set snr_gamma: null")
    # ---------------------------------------------------------------- setup
    # Several processes without CUDA (torchrun on CPU): accelerate needs cpu=True to pick gloo.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=multi_cpu,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    set_seed(cfg.seed)  # the model's initial weights; the same on every process
    cuda = accelerator.device.type == "cuda"
    if cuda:  # TF32 matmuls and convolutions for what runs in float32 outside autocast (CPU: no such mode)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    checkpoint_dir, live_dir = Path(checkpoint_dir), Path(live_dir)

    # Inputs are checked before the resume section may delete another run's checkpoints: a run that
    # cannot train (empty or too little data) must fail with the last good run's files intact.
    steps_per_epoch = spec.batches_per_epoch // cfg.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise ValueError(f"{spec.batches_per_epoch} batches per epoch (on each of {world} process(es)) cannot make "
                         f"one optimizer step with gradient_accumulation_steps={cfg.gradient_accumulation_steps}: the "
                         "training data is empty or smaller than a batch; use more data, smaller batches or less "
                         f"accumulation. {checkpoint_dir} was left as it was.")
    total_steps = steps_per_epoch * cfg.num_epochs
    if cfg.max_train_steps is not None:
        total_steps = min(total_steps, cfg.max_train_steps)
    micro_per_epoch = steps_per_epoch * cfg.gradient_accumulation_steps  # a ragged tail is not used

    # ---------------------------------------------------------------- model, optimizer, EMA
    model = spec.build_model()
    noise_scheduler = cfg.noise_scheduler()
    anatomy = memory_anatomy(model, use_ema=cfg.use_ema)
    params = spec.param_groups(model, cfg.learning_rate) if spec.param_groups else model.parameters()
    # Fused AdamW (one kernel for all tensors, step counts kept on the device) on CUDA, except with fp16:
    # there its grad scaler hands the skip decision to the fused kernel, and accelerate could no longer
    # tell the loop that a step was skipped (the LR schedule and the EMA must then stand still). The CPU
    # keeps torch's default path: other kernels would move the embedded default's results.
    fused = cuda and cfg.mixed_precision != "fp16"
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                                  **({"fused": True} if fused else {}))
    # Stepped by hand once per optimizer step (not prepared: accelerate would step it per process).
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if cfg.use_ema:
        # foreach: one launch per update for all tensors on CUDA; the CPU keeps the per-tensor update
        # (bit for bit the committed results).
        ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=cfg.ema_decay, foreach=cuda)
        ema.to(accelerator.device)
    # Each process draws its own noise, timesteps and dropout masks, re-seeded per micro-batch.
    generator = torch.Generator(device=accelerator.device)
    counters = _Counters()
    accelerator.register_for_checkpointing(lr_scheduler, counters)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # ---------------------------------------------------------------- resume
    run_key = identity(run_id, code_identity())
    layout = {"processes": world, "gradient_accumulation_steps": cfg.gradient_accumulation_steps}
    _prepare_checkpoint_dir(checkpoint_dir, live_dir, run_key, layout, is_main, log)
    accelerator.wait_for_everyone()
    found = list_checkpoints(checkpoint_dir)
    resumed_from = None
    if found:
        resumed_from = found[-1]
        accelerator.load_state(str(resumed_from))
        log.info(f"resumed from {resumed_from} at step {counters.global_step} (epoch {counters.epoch}, "
                 f"batch {counters.batch_in_epoch})")

    try:
        live = None
        if is_main:
            if resumed_from is not None:
                _restore_live(resumed_from, live_dir)
            elif live_dir.is_dir():
                shutil.rmtree(live_dir)  # a fresh run starts fresh curves
            live = Live(dir=str(live_dir), resume=resumed_from is not None, save_dvc_exp=False, dvcyaml=None)
            live.step = counters.global_step

        def save_checkpoint() -> None:
            accelerator.wait_for_everyone()
            final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{counters.global_step}"
            tmp = checkpoint_dir / (final.name + ".tmp")
            accelerator.save_state(str(tmp))  # main process writes the shared state; each rank its RNG
            accelerator.wait_for_everyone()
            if is_main:
                if live_dir.is_dir():  # the curves and grids so far travel with the checkpoint
                    shutil.copytree(live_dir, tmp / LIVE_COPY)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)  # a checkpoint is visible only once complete
                keep = cfg.checkpoints_total_limit
                if keep is not None:
                    for old in list_checkpoints(checkpoint_dir)[:-keep]:
                        shutil.rmtree(old)
            accelerator.wait_for_everyone()

        def with_ema_weights(fn: Callable[[nn.Module], Any]) -> Any:
            net = accelerator.unwrap_model(model)
            if ema is None:
                return fn(net)
            ema.store(net.parameters())
            ema.copy_to(net.parameters())
            try:
                return fn(net)
            finally:
                ema.restore(net.parameters())

        def log_samples(epoch: int, last: bool) -> None:
            """A grid every `samples_every_epochs` epochs and always one at the end of the run (a
            declared grid folder must never be empty, whatever the epoch count)."""
            if is_main and spec.sample_grid is not None and cfg.samples_every_epochs > 0 \
                    and ((epoch + 1) % cfg.samples_every_epochs == 0 or last):
                was_training = model.training
                model.eval()
                grid = with_ema_weights(lambda net: spec.sample_grid(net, noise_scheduler, epoch))
                model.train(was_training)
                live.log_image(f"samples/epoch-{epoch + 1:03d}.png", grid)

        # ---------------------------------------------------------------- loop
        log.info(f"training {anatomy['trainable_parameters']:,} parameters for {total_steps} steps "
                 f"({steps_per_epoch} per epoch, {world} process(es), accumulation {cfg.gradient_accumulation_steps})")
        progress = tqdm(total=total_steps, initial=counters.global_step, desc="train", unit="step",
                        disable=not (is_main and show_progress), dynamic_ncols=True)
        samples_seen, train_time = 0, 0.0
        # The losses since the last logging step, summed on the device: reading a device value on the host
        # waits for every queued kernel, so that happens only at logging steps.
        pending_loss = torch.zeros((), device=accelerator.device)
        pending_parts: dict[str, torch.Tensor] = {}  # the spec's extra loss terms, likewise
        pending_steps = 0
        model.train()
        while counters.global_step < total_steps:
            epoch = counters.epoch
            batches = iter(spec.make_loader(epoch, rank, world))
            # Deterministic loader: skip what the checkpointed run had consumed of this epoch.
            for _ in itertools.islice(batches, counters.batch_in_epoch):
                pass
            t0 = time.perf_counter()
            while counters.batch_in_epoch < micro_per_epoch and counters.global_step < total_steps:
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"the loader of epoch {epoch} ended after {counters.batch_in_epoch} batches; "
                                       f"the spec promised {spec.batches_per_epoch}") from None
                if cuda:  # from pinned memory the copy is queued, not waited for (a pageable one syncs the stream)
                    batch = _to_device_async(batch, accelerator.device)
                x0, cond = spec.prepare_batch(batch, accelerator.device)
                bsz = x0.shape[0]
                generator.manual_seed(noise_seed(cfg.seed, rank, epoch * micro_per_epoch + counters.batch_in_epoch))
                noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,),
                                          generator=generator, device=x0.device)
                if cfg.cond_drop_prob > 0 and spec.null_condition is not None:
                    drop = torch.rand(bsz, generator=generator, device=x0.device) < cfg.cond_drop_prob
                    cond = spec.null_condition(cond, drop)
                noisy = noise_scheduler.add_noise(x0, noise, timesteps)
                if cfg.prediction_type == "epsilon":
                    target = noise
                else:  # v = sqrt(a) * eps - sqrt(1 - a) * x0
                    target = noise_scheduler.get_velocity(x0, noise, timesteps)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        pred = spec.predict(model, noisy, timesteps, cond)
                    if spec.loss is None:
                        loss, parts = denoising_loss(pred.float(), target.float(), timesteps, noise_scheduler, cfg), {}
                    else:
                        loss, parts = spec.loss(pred.float(), target.float(), cond)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()  # a no-op inside an accumulation window (accelerate)
                    optimizer.zero_grad(set_to_none=True)
                accumulation = cfg.gradient_accumulation_steps  # a step's loss: the mean over its micro-batches
                pending_loss += loss.detach() / accumulation
                for name, value in parts.items():
                    pending_parts[name] = pending_parts.get(name, 0) + value.detach().float() / accumulation
                counters.batch_in_epoch += 1
                samples_seen += bsz * world
                if not accelerator.sync_gradients:
                    continue
                # ---- one optimizer step done (or skipped by the fp16 grad scaler on inf/nan gradients:
                # then the weights did not move, so neither may the LR schedule nor the EMA)
                if not accelerator.optimizer_step_was_skipped:
                    lr_scheduler.step()
                    if ema is not None:
                        ema.step(accelerator.unwrap_model(model).parameters())
                counters.global_step += 1
                pending_steps += 1
                epoch_done = counters.batch_in_epoch >= micro_per_epoch
                run_done = counters.global_step >= total_steps
                checkpoint_due = counters.global_step % cfg.checkpointing_steps == 0 or run_done
                # ---- a logging step: one dvclive row at x = the step, the mean of the steps since the last
                # row, gathered over processes: the loop's one host sync. Checkpoint steps log too (a row's
                # steps then never span a resume), and so does the step after which the last
                # `steps_per_epoch` steps begin (final_loss, their mean, is then exact). Every process
                # logs at the same steps (the gather is collective).
                if (counters.global_step % cfg.log_every_steps == 0 or checkpoint_due
                        or counters.global_step == total_steps - steps_per_epoch):
                    names = sorted(pending_parts)
                    sums = torch.stack([pending_loss, *(pending_parts[k] for k in names)])
                    means = (accelerator.gather(sums[None]).mean(0) / pending_steps).tolist()
                    if is_main:
                        live.step = counters.global_step
                        for name, value in zip(["loss", *names], means):
                            live.log_metric(f"train/{name}", value)
                        live.log_metric("train/lr", lr_scheduler.get_last_lr()[0])
                        live.next_step()
                    progress.update(pending_steps)
                    progress.set_postfix(loss=f"{means[0]:.4f}", epoch=epoch + 1)
                    pending_loss.zero_()
                    pending_parts.clear()
                    pending_steps = 0
                if epoch_done or run_done:
                    train_time += time.perf_counter() - t0
                    log_samples(epoch, last=run_done)  # before the checkpoint, which keeps a copy
                    t0 = time.perf_counter()
                if epoch_done:  # counters point at the next epoch before a checkpoint records them
                    counters.epoch, counters.batch_in_epoch = epoch + 1, 0
                if checkpoint_due:
                    save_checkpoint()
                if step_callback is not None:
                    step_callback(counters.global_step)
                if epoch_done:
                    break
        progress.close()

        # ---------------------------------------------------------------- outputs
        accelerator.wait_for_everyone()
        # What the run made (deterministic: the same after a resume) apart from how the run went
        # (wall-clock, resume point, memory), which callers write to a file of its own.
        summary = {
            "steps": counters.global_step,
            "epochs": counters.epoch,
            "processes": world,
            "final_loss": None,
            "run": {
                "samples_per_second": samples_seen / train_time if train_time > 0 else None,
                "train_seconds": train_time,
                "resumed_from_step": int(resumed_from.name[len(CHECKPOINT_PREFIX):]) if resumed_from else None,
                "memory_anatomy": {**anatomy, "adam_state_mb_measured": measured_adam_state_mb(optimizer)},
            },
        }
        if is_main:
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            with_ema_weights(lambda net: spec.save(net, noise_scheduler, model_dir))
            summary["final_loss"] = mean_of_last_steps(live_dir / "plots" / "metrics" / "train" / "loss.tsv",
                                                       counters.global_step, steps_per_epoch)
            live.end()
        accelerator.wait_for_everyone()
        accelerator.end_training()
    except Exception:  # bad data, a crash: a fresh run that saved nothing gives the last run back
        if is_main and resumed_from is None:
            _put_back_previous(checkpoint_dir, live_dir)
        raise
    if is_main:
        _drop_previous(checkpoint_dir)
    return summary
