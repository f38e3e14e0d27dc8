"""Flow for DVC stage train_dreambooth: DreamBooth fine-tuning of the face LDM with prior
preservation (full or LoRA, optional subject identifier); see tasks/dreambooth/train.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.dreambooth.stages import train_dreambooth_task


@flow(name="train_dreambooth")
def train_dreambooth(subject_dir: str, class_dir: str, base_dir: str, model_dir: str, checkpoint_dir: str,
                     live_dir: str, metrics_path: str, params: dict) -> str:
    return train_dreambooth_task(subject_dir, class_dir, base_dir, model_dir, checkpoint_dir, live_dir,
                                 metrics_path, params)


if __name__ == "__main__":
    run_stage(train_dreambooth, "train_dreambooth")
