"""Flow for DVC stage evaluate_cartoon: see tasks/cartoon/evaluate.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.evaluate import evaluate_cartoon as evaluate


@flow(name="evaluate_cartoon")
def evaluate_cartoon(model_dir: str, classifier_dir: str, shard_dir: str, out_dir: str, metrics_path: str,
                     guidance_scales: list[float] = (0, 1, 2, 3, 5, 7, 9), num_samples: int = 64,
                     num_inference_steps: int = 20, scheduler: str = "dpm", seed: int = 0, batch_size: int = 64,
                     grid_images: int = 16) -> str:
    return evaluate(model_dir, classifier_dir, shard_dir, out_dir, metrics_path, guidance_scales=list(guidance_scales),
                    num_samples=num_samples, num_inference_steps=num_inference_steps, scheduler=scheduler,
                    seed=seed, batch_size=batch_size, grid_images=grid_images)


if __name__ == "__main__":
    run_stage(evaluate_cartoon, "evaluate_cartoon")
