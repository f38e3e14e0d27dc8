"""Flow for DVC stage sample_class: class latents sampled from the base model (prior preservation
data), resumable per shard; see tasks/dreambooth/class_samples.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.dreambooth.config import SampleClassConfig
from tasks.dreambooth.stages import sample_class_task


@flow(name="sample_class")
def sample_class(base_dir: str, out_dir: str, grid_path: str, params: dict) -> dict:
    cfg = SampleClassConfig.from_params(params, "sample_class")
    return sample_class_task(base_dir, out_dir, grid_path, cfg)


if __name__ == "__main__":
    run_stage(sample_class, "sample_class")
