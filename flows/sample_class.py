"""Flow for DVC stage sample_class: prior-preservation latents sampled from the base model, keyed by
its identity; see tasks/dreambooth/class_samples.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.dreambooth.class_samples import sample_class as sample
from tasks.dreambooth.config import SampleClassConfig
from tasks.reporting.log import get_logger


@stage_task("sample_class")
def sample_class_task(base_dir: str, out_dir: str, grid_path: str, cfg: SampleClassConfig) -> dict:
    """Sample the class latents (prior preservation data) from the base model; returns their identity."""
    manifest = sample(base_dir, out_dir, grid_path, cfg, log=get_logger().info)
    return {
        "count": manifest["counts"]["images"],
        "base": manifest["base"]["identity"],
        "images_per_second": manifest["throughput_images_per_second"],
    }


@flow(name="sample_class")
def sample_class(base_dir: str, out_dir: str, grid_path: str, params: dict) -> dict:
    return sample_class_task(base_dir, out_dir, grid_path, SampleClassConfig.from_params(params, "sample_class"))


if __name__ == "__main__":
    run_stage(sample_class, "sample_class")
