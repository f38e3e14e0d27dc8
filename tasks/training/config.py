"""The training engine's parameters: one `training:` mapping in a stage's params section.

Every key is required (params.yaml lists all of them for each training section): the values live in
params.yaml only, and an unknown key is an error naming it (tasks/config/typed.py).

`LoopConfig` is what every model trained by the engine needs (optimizer, schedule, EMA,
checkpoints, logging, the divergence guard); `TrainConfig` adds the noise schedule and loss of the
diffusion models. The VAE's section is a `LoopConfig` plus its own loss weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.typed import StageConfig


@dataclass(frozen=True)
class GuardConfig(StageConfig):
    """When the loss counts as diverged, and what the engine then does (tasks/training/guard.py)."""

    spike_factor: float  # a logged loss above this many times the median of the recent healthy ones is a spike
    patience: int  # consecutive spiking rows before the run counts as diverged (a non-finite loss: at once)
    max_recoveries: int  # roll back to the last healthy checkpoint at most this often; then the stage fails
    lr_factor: float  # each recovery multiplies the learning rate by this

    def __post_init__(self):
        _check(
            [
                (self.spike_factor > 1, "guard.spike_factor must be > 1"),
                (self.patience >= 1, "guard.patience must be >= 1"),
                (self.max_recoveries >= 0, "guard.max_recoveries must be >= 0"),
                (0 < self.lr_factor < 1, "guard.lr_factor must be in (0, 1)"),
            ]
        )


@dataclass(frozen=True)
class LoopConfig(StageConfig):
    seed: int  # model init, and everything the loss draws (noise, timesteps, dropout, flips)
    num_epochs: int  # passes over the (per-process) training data
    max_train_steps: int | None  # stop after this many optimizer steps (null: num_epochs decides)
    gradient_accumulation_steps: int  # micro-batches per optimizer step
    mixed_precision: str  # no | fp16 | bf16 (accelerate autocast)
    learning_rate: float  # AdamW peak learning rate
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float
    lr_warmup_steps: int  # linear warmup, then cosine decay to 0 at the last step
    max_grad_norm: float | None  # gradient clipping (null: none)
    use_ema: bool  # the saved model gets the EMA weights
    ema_decay: float  # max decay; warms up as (1 + step) / (10 + step)
    checkpointing_steps: int  # save a resumable checkpoint every N optimizer steps
    checkpoints_total_limit: int | None  # keep only the newest N checkpoints (and the newest healthy one)
    samples_every_epochs: int  # sample grid every N epochs (0: never)
    log_every_steps: int  # losses reach the host (dvclive row, progress, guard) every N optimizer steps, as their mean
    guard: GuardConfig

    def __post_init__(self):
        _check(
            [
                (self.num_epochs >= 1, "num_epochs must be >= 1"),
                (self.max_train_steps is None or self.max_train_steps >= 1, "max_train_steps must be >= 1 or null"),
                (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
                (self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision must be no, fp16 or bf16"),
                (self.learning_rate > 0, "learning_rate must be > 0"),
                (self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0"),
                (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be > 0 or null"),
                (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
                (self.checkpointing_steps >= 1, "checkpointing_steps must be >= 1"),
                (self.log_every_steps >= 1, "log_every_steps must be >= 1"),
                (
                    self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
                    "checkpoints_total_limit must be >= 1 or null",
                ),
            ]
        )


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """A diffusion model's training: the loop plus its noise schedule and loss."""

    num_train_timesteps: int  # noise schedule
    beta_schedule: str  # linear | scaled_linear | squaredcos_cap_v2
    beta_start: float
    beta_end: float
    prediction_type: str  # epsilon | v_prediction
    snr_gamma: float | None  # Min-SNR loss weighting (Hang et al. 2023; 5 is their value); null: plain MSE
    cond_drop_prob: float  # fraction of conditions replaced by the null condition (CFG)

    def __post_init__(self):
        super().__post_init__()
        _check(
            [
                (
                    self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"),
                    "beta_schedule must be linear, scaled_linear or squaredcos_cap_v2",
                ),
                (0 < self.beta_start < self.beta_end < 1, "need 0 < beta_start < beta_end < 1"),
                (
                    self.prediction_type in ("epsilon", "v_prediction"),
                    "prediction_type must be epsilon or v_prediction",
                ),
                (self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma must be > 0 or null"),
                (0 <= self.cond_drop_prob < 1, "cond_drop_prob must be in [0, 1)"),
            ]
        )

    def noise_scheduler(self):
        """The training noise schedule (also the default sampling scheduler of a saved model): a
        diffusers DDPMScheduler, imported here so that data stages (and their spawned workers),
        which import this module for their configs, do not pay diffusers' 3 s import."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=self.prediction_type,
            clip_sample=False,  # the model, not a clamp, should keep x0 in range
        )


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(f"training params: {message}")
