"""The training engine shared by every model the project trains: the cartoon model, the latent
model, DreamBooth and the face VAE.

A model comes as a `TrainSpec` (build the network, the batches of an epoch, the loss of one batch,
how to save); `train` is one loop, read top to bottom in labelled blocks:

  set up          accelerate (devices, mixed precision, accumulation, processes); inputs checked
                  before anything on disk is touched
  model           AdamW, cosine schedule with warmup, EMA of the weights, the memory anatomy
  resume          the newest checkpoint of the same run (tasks/training/checkpoints.py)
  train           epoch loaders re-created from (seed, epoch); a resumed epoch skips its consumed batches
    step            the spec's loss under autocast, backward, clipping, the optimizer step
    log             every `log_every_steps`: one dvclive row, the progress bar, the divergence guard
    roll back       a diverged loss: back to the last healthy checkpoint at a lower learning rate
    epoch end       a sample grid
    checkpoint      every `checkpointing_steps`
  save            the model with its EMA weights, the summary

Performance: the step never waits for the device between logging steps. Losses stay device
tensors, summed in a `LossWindow` until a logging step brings their mean to the host once (the
loop's only host sync, also where the guard looks); on a GPU the host meanwhile queues the next
steps. tests/training/test_engine_syncs.py counts the syncs.

Exact resume: a checkpoint is taken at optimizer-step boundaries and holds everything that moves;
what a micro-batch draws (noise, timesteps, dropout, flips) comes from a generator seeded by
(seed, rank, position), and an epoch's loader is deterministic, so skipping what the checkpoint
had consumed puts a resumed run where an uninterrupted one would be. Only the same code, params and
data resume (the run key); see checkpoints.py for what happens to another run's checkpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.reporting.log import get_logger
from tasks.reporting.progress import progress
from tasks.tracking.identity import code_identity, identity
from tasks.training.checkpoints import CheckpointStore, list_checkpoints, step_of
from tasks.training.config import LoopConfig
from tasks.training.guard import DivergenceError, DivergenceGuard
from tasks.training.memory import measured_adam_state_mb, memory_anatomy

__all__ = [
    "TrainSpec",
    "StopTraining",
    "DivergenceError",
    "train",
    "noise_seed",
    "list_checkpoints",
    "mean_of_last_steps",
]


@dataclass
class TrainSpec:
    """What one model brings to the engine."""

    build_model: Callable[[], nn.Module]
    """Returns the module to train, freshly initialised (the engine seeds torch first)."""
    make_loader: Callable[[int, int, int], Iterable]
    """(epoch, rank, world_size) -> this process's batches for the epoch; deterministic."""
    batches_per_epoch: int
    """Micro-batches each process gets per epoch (every rank the same)."""
    objective: Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    """(model, batch, generator) -> (loss to minimise, {name: detached scalar} logged as `train/<name>`).
    Runs under autocast; draws anything random from `generator` (seeded per micro-batch; its device
    is the training device)."""
    save: Callable[[nn.Module, str], None]
    """(model with EMA weights, out_dir) -> writes the final model."""
    sample_grid: Callable[[nn.Module, int], Any] | None = None
    """(model with EMA weights, epoch) -> a PIL image logged per `samples_every_epochs` and at the end."""
    param_groups: Callable[[nn.Module, float], list[dict[str, Any]]] | None = None
    """(model, learning_rate) -> AdamW parameter groups. None: one group of every parameter."""


class StopTraining(Exception):
    """Raised by a step callback to end the run at once, as a kill would (tests use it)."""


def noise_seed(seed: int, rank: int, micro_batch: int) -> int:
    """The seed of one micro-batch's draws: a function of where the run is, not of a generator's
    history, so a resumed run draws the same on every rank."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + micro_batch) % (2**63 - 1)


class _Counters:
    """Where the run is; saved with every checkpoint (accelerate's custom-state mechanism)."""

    def __init__(self):
        self.global_step = 0  # optimizer steps done
        self.epoch = 0  # epoch in progress
        self.batch_in_epoch = 0  # micro-batches of that epoch consumed

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.global_step, self.epoch = int(state["global_step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


class LossWindow:
    """The losses of the steps since the last logging step, summed on the device."""

    def __init__(self, device: torch.device, accumulation: int):
        self.total = torch.zeros((), device=device)
        self.parts: dict[str, torch.Tensor] = {}
        self.steps, self.accumulation = 0, accumulation

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """One micro-batch (a step's loss is the mean over its micro-batches)."""
        self.total += loss.detach() / self.accumulation
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0) + value.detach().float() / self.accumulation

    def means(self, accelerator) -> dict[str, float]:
        """{"loss": ..., part: ...}: the means per step over every process, on the host (one sync);
        the window starts afresh."""
        names = sorted(self.parts)
        sums = torch.stack([self.total, *(self.parts[k] for k in names)])
        values = (accelerator.gather(sums[None]).mean(0) / self.steps).tolist()
        self.clear()
        return dict(zip(["loss", *names], values))

    def clear(self) -> None:
        self.total.zero_()
        self.parts.clear()
        self.steps = 0


@contextlib.contextmanager
def ema_weights(net: nn.Module, ema):
    """`net` with the EMA weights inside the block and its own weights back after it."""
    if ema is None:
        yield net
        return
    ema.store(net.parameters())
    ema.copy_to(net.parameters())
    try:
        yield net
    finally:
        ema.restore(net.parameters())


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


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    return next((n for n in map(_batch_len, values) if n), 0)


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


def _open_live(live_dir: Path, resume: bool, step: int):
    from dvclive import Live

    live = Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)
    live.step = step
    return live


def train(
    spec: TrainSpec,
    cfg: LoopConfig,
    *,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    run_id: str,
    step_callback: Callable[[int], None] | None = None,
    show_progress: bool = True,
) -> dict:
    """Train `spec`'s model under `cfg`; returns the summary metrics (also logged to dvclive).

    `run_id` identifies the run's params and data; the engine adds the code's identity.
    `step_callback(global_step)` runs after every optimizer step (and its checkpoint, if any).
    A diffusion model's spec is a `tasks.training.diffusion.DiffusionSpec`, turned into a TrainSpec here.
    """
    if not isinstance(spec, TrainSpec):
        spec = spec.for_engine(cfg)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    log = get_logger()
    live_dir = Path(live_dir)

    # ---------------------------------------------------------------- set up
    # Several processes without CUDA (torchrun on CPU): accelerate needs cpu=True to pick gloo.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, cpu=multi_cpu, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(cfg.seed)  # the model's initial weights; the same on every process
    cuda = accelerator.device.type == "cuda"
    if cuda:  # TF32 matmuls and convolutions for what runs in float32 outside autocast (CPU: no such mode)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    # Inputs are checked before the resume block may set another run's checkpoints aside.
    steps_per_epoch = spec.batches_per_epoch // cfg.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"{spec.batches_per_epoch} batches per epoch (on each of {world} process(es)) cannot make "
            f"one optimizer step with gradient_accumulation_steps={cfg.gradient_accumulation_steps}: the "
            "training data is empty or smaller than a batch; use more data, smaller batches or less "
            f"accumulation. {checkpoint_dir} was left as it was."
        )
    total_steps = steps_per_epoch * cfg.num_epochs
    if cfg.max_train_steps is not None:
        total_steps = min(total_steps, cfg.max_train_steps)
    micro_per_epoch = steps_per_epoch * cfg.gradient_accumulation_steps  # a ragged tail is not used

    # ---------------------------------------------------------------- model, optimizer, EMA
    model = spec.build_model()
    anatomy = memory_anatomy(model, use_ema=cfg.use_ema)
    params = spec.param_groups(model, cfg.learning_rate) if spec.param_groups else model.parameters()
    # Fused AdamW (one kernel for all tensors) on CUDA, except with fp16: there its grad scaler hands the
    # skip decision to the kernel, and the loop could no longer tell that a step was skipped (the LR
    # schedule and the EMA must then stand still). The CPU keeps torch's default path.
    fused = cuda and cfg.mixed_precision != "fp16"
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        **({"fused": True} if fused else {}),
    )
    # Stepped by hand once per optimizer step (not prepared: accelerate would step it per process).
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.lr_warmup_steps, total_steps)
    peak_lrs = list(lr_scheduler.base_lrs)  # the guard scales these down after a roll-back
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if cfg.use_ema:  # foreach: one launch per update on CUDA; the CPU keeps the per-tensor update
        ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=cfg.ema_decay, foreach=cuda)
        ema.to(accelerator.device)
    generator = torch.Generator(device=accelerator.device)  # re-seeded per micro-batch
    counters, guard = _Counters(), DivergenceGuard(cfg.guard)
    accelerator.register_for_checkpointing(lr_scheduler, counters, guard)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # ---------------------------------------------------------------- resume
    store = CheckpointStore(checkpoint_dir, live_dir, accelerator, keep=cfg.checkpoints_total_limit)
    store.adopt(
        identity(run_id, code_identity()),
        {"processes": world, "gradient_accumulation_steps": cfg.gradient_accumulation_steps},
        log,
    )
    resumed_from = store.latest()
    try:
        if resumed_from is not None:
            store.load(resumed_from)
            log.info(
                f"resumed from {resumed_from} at step {counters.global_step} (epoch {counters.epoch}, "
                f"batch {counters.batch_in_epoch})"
            )
        elif is_main and live_dir.is_dir():
            shutil.rmtree(live_dir)  # a fresh run starts fresh curves
        live = _open_live(live_dir, resumed_from is not None, counters.global_step) if is_main else None

        def log_samples(epoch: int, last: bool) -> None:
            """A grid every `samples_every_epochs` epochs and always one at the end of the run (a
            declared grid folder must never be empty, whatever the epoch count)."""
            if (
                is_main
                and spec.sample_grid is not None
                and cfg.samples_every_epochs > 0
                and ((epoch + 1) % cfg.samples_every_epochs == 0 or last)
            ):
                model.eval()
                with ema_weights(accelerator.unwrap_model(model), ema) as net:
                    grid = spec.sample_grid(net, epoch)
                model.train()
                live.log_image(f"samples/epoch-{epoch + 1:03d}.png", grid)

        def roll_back(loss: float, step: int) -> None:
            """Back to the newest healthy checkpoint, at `guard.lr_factor` times the learning rate."""
            nonlocal live
            target = store.latest(healthy=True)
            if not guard.can_recover() or target is None:
                why = (
                    "no healthy checkpoint to return to: lower training.learning_rate or checkpointing_steps"
                    if target is None
                    else f"after {guard.recoveries} recoveries (guard.max_recoveries)"
                )
                raise DivergenceError(
                    f"training diverged at step {counters.global_step} (loss {loss:.4g}) {why}; no model was saved"
                )
            recoveries, lr_scale = guard.recoveries, guard.lr_scale
            store.load(target)
            store.discard_after(step_of(target))
            guard.after_rollback(recoveries, lr_scale)
            lr_scheduler.base_lrs = [lr * guard.lr_scale for lr in peak_lrs]
            now = [base * f(lr_scheduler.last_epoch) for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
            for group, lr in zip(optimizer.param_groups, now):
                group["lr"] = lr
            lr_scheduler._last_lr = now
            if is_main:
                live = _open_live(live_dir, True, counters.global_step)
            log.warning(
                f"divergence guard: loss {loss:.4g} at step {step}; rolled back to step "
                f"{counters.global_step}, learning rate x{guard.lr_scale:g} "
                f"(recovery {guard.recoveries} of at most {cfg.guard.max_recoveries})"
            )

        # ---------------------------------------------------------------- train
        log.info(
            f"training {anatomy['trainable_parameters']:,} parameters for {total_steps} steps "
            f"({steps_per_epoch} per epoch, {world} process(es), accumulation {cfg.gradient_accumulation_steps})"
        )
        bar = progress(
            total=total_steps,
            initial=counters.global_step,
            desc="train",
            unit="step",
            disable=not (is_main and show_progress),
            dynamic_ncols=True,
        )
        window = LossWindow(accelerator.device, cfg.gradient_accumulation_steps)
        samples_seen, train_time = 0, 0.0
        model.train()
        while counters.global_step < total_steps:
            epoch = counters.epoch
            batches = iter(spec.make_loader(epoch, rank, world))
            for _ in itertools.islice(batches, counters.batch_in_epoch):  # consumed before the checkpoint
                pass
            t0 = time.perf_counter()
            while counters.batch_in_epoch < micro_per_epoch and counters.global_step < total_steps:
                # ---- step: one micro-batch forward and backward; an optimizer step at the window's end
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(
                        f"the loader of epoch {epoch} ended after {counters.batch_in_epoch} batches; "
                        f"the spec promised {spec.batches_per_epoch}"
                    ) from None
                if cuda:  # from pinned memory the copy is queued, not waited for
                    batch = _to_device_async(batch, accelerator.device)
                generator.manual_seed(noise_seed(cfg.seed, rank, epoch * micro_per_epoch + counters.batch_in_epoch))
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss, parts = spec.objective(model, batch, generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()  # a no-op inside an accumulation window (accelerate)
                    optimizer.zero_grad(set_to_none=True)
                window.add(loss, parts)
                counters.batch_in_epoch += 1
                samples_seen += _batch_len(batch) * world
                if not accelerator.sync_gradients:
                    continue
                # An fp16 step skipped on inf/nan gradients did not move the weights: nor may the LR or EMA.
                if not accelerator.optimizer_step_was_skipped:
                    lr_scheduler.step()
                    if ema is not None:
                        ema.step(accelerator.unwrap_model(model).parameters())
                counters.global_step += 1
                window.steps += 1
                step = counters.global_step
                epoch_done, run_done = counters.batch_in_epoch >= micro_per_epoch, step >= total_steps
                checkpoint_due = step % cfg.checkpointing_steps == 0 or run_done

                # ---- log: one row at x = step, the mean since the last row. Checkpoint steps log (a row
                # never spans a resume), and so does the step before the last `steps_per_epoch` (their
                # mean, final_loss, is then exact). Every process logs at the same steps (a collective).
                if step % cfg.log_every_steps == 0 or checkpoint_due or step == total_steps - steps_per_epoch:
                    means = window.means(accelerator)
                    verdict = guard.judge(means["loss"], last_row=run_done)
                    # ---- roll back: the loss left the rails (tasks/training/guard.py)
                    if verdict == "diverged":
                        roll_back(means["loss"], step)
                        bar.update(counters.global_step - bar.n)
                        break  # the loader of the restored epoch, from its restored position
                    if is_main:
                        live.step = step
                        for name, value in means.items():
                            live.log_metric(f"train/{name}", value)
                        live.log_metric("train/lr", lr_scheduler.get_last_lr()[0])
                        live.next_step()
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", epoch=epoch + 1)
                # ---- epoch end: a grid (before the checkpoint, which keeps a copy)
                if epoch_done or run_done:
                    train_time += time.perf_counter() - t0
                    log_samples(epoch, last=run_done)
                    t0 = time.perf_counter()
                if epoch_done:  # counters point at the next epoch before a checkpoint records them
                    counters.epoch, counters.batch_in_epoch = epoch + 1, 0
                # ---- checkpoint
                if checkpoint_due:
                    store.save(step, healthy=guard.healthy)
                if step_callback is not None:
                    step_callback(step)
                if epoch_done:
                    break
        bar.close()

        # ---------------------------------------------------------------- save
        accelerator.wait_for_everyone()
        # What the run made (deterministic: the same after a resume) apart from how the run went
        # (wall-clock, resume point, memory), which callers write to a file of their own.
        summary = {
            "steps": counters.global_step,
            "epochs": counters.epoch,
            "processes": world,
            "final_loss": None,
            "recoveries": guard.recoveries,  # roll-backs by the divergence guard
            "run": {
                "samples_per_second": samples_seen / train_time if train_time > 0 else None,
                "train_seconds": train_time,
                "resumed_from_step": step_of(resumed_from) if resumed_from else None,
                "memory_anatomy": {**anatomy, "adam_state_mb_measured": measured_adam_state_mb(optimizer)},
            },
        }
        if is_main:
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            with ema_weights(accelerator.unwrap_model(model), ema) as net:
                spec.save(net, model_dir)
            summary["final_loss"] = mean_of_last_steps(
                live_dir / "plots" / "metrics" / "train" / "loss.tsv", counters.global_step, steps_per_epoch
            )
            live.end()
        accelerator.wait_for_everyone()
        accelerator.end_training()
    except DivergenceError:  # resuming would only diverge again: the last good run's files come back
        store.discard_run()
        store.put_back_previous()
        raise
    except Exception:  # bad data, a crash: a fresh run that saved nothing gives the last run back
        if resumed_from is None:
            store.put_back_previous()
        raise
    store.drop_previous()
    return summary
