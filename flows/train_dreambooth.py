"""Flow for DVC stage train_dreambooth: DreamBooth fine-tuning of the face LDM with prior
preservation (full or LoRA, optional subject identifier); see tasks/dreambooth/train.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.dreambooth.config import TrainDreamboothConfig
from tasks.dreambooth.train import train_dreambooth as fine_tune

train_dreambooth_task = stage_task("train_dreambooth")(fine_tune)


@flow(name="train_dreambooth")
def train_dreambooth(
    subject_dir: str,
    class_dir: str,
    base_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    params: dict,
) -> str:
    train_dreambooth_task(
        subject_dir,
        class_dir,
        base_dir,
        model_dir,
        checkpoint_dir,
        live_dir,
        metrics_path,
        TrainDreamboothConfig.from_params(params, "train_dreambooth"),
    )
    return model_dir


if __name__ == "__main__":
    run_stage(train_dreambooth, "train_dreambooth")
