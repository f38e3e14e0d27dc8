"""Prefect tasks of the cartoon stages; the work lives in fetch.py, preprocess.py, train.py and
classifier.py (evaluate_cartoon's task lives with its work in evaluate.py).

Naming rule: the task that runs stage X is `X_task`, named "X" in Prefect. No caching by Prefect:
DVC decides what is stale.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.cartoon.config import ClassifierConfig, FetchCartoonsConfig, PreprocessCartoonsConfig, TrainCartoonConfig
from tasks.common.download import DownloadError
from tasks.common.log import get_logger


def _is_download_error(task, task_run, state) -> bool:
    """Retry the stage only for network trouble; a bad checksum or a bad param is final."""
    try:
        state.result()
    except DownloadError as exc:
        return "could not download" in str(exc)
    except Exception:
        return False
    return False


@task(name="fetch_cartoons", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=_is_download_error)
def fetch_cartoons_task(out_dir: str, config: FetchCartoonsConfig, download_dir: str = "data/downloads") -> dict:
    """Write the Cartoon Set folder `out_dir`; returns what it records in `out_dir/fetch.json`."""
    from tasks.cartoon.fetch import fetch_cartoons

    return fetch_cartoons(out_dir, config, download_dir)


@task(name="preprocess_cartoons", cache_policy=NO_CACHE)
def preprocess_cartoons_task(raw_dir: str, out_dir: str, config: PreprocessCartoonsConfig) -> str:
    """Validate every (csX.png, csX.csv) pair and write train/val shards; returns the manifest path."""
    from tasks.cartoon.preprocess import preprocess_cartoons

    return preprocess_cartoons(raw_dir, out_dir, **config.to_dict())


@task(name="train_cartoon", cache_policy=NO_CACHE)
def train_cartoon_task(shard_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str,
                       config: TrainCartoonConfig) -> str:
    """Train the cartoon model; returns the model folder (diffusers format)."""
    from tasks.cartoon.train import train_cartoon

    summary = train_cartoon(shard_dir, model_dir, checkpoint_dir, live_dir, metrics_path, config)
    if summary is not None:
        sps = summary["run"]["samples_per_second"]
        get_logger().info(f"train_cartoon: {summary['steps']} steps; final loss {summary['final_loss']}; "
                          f"{sps or 0:.1f} samples/s")
    return model_dir


@task(name="train_attribute_classifier", cache_policy=NO_CACHE)
def train_attribute_classifier_task(shard_dir: str, model_dir: str, metrics_path: str,
                                    config: ClassifierConfig) -> str:
    """Train the judge on the real training shards; returns the model folder."""
    from tasks.cartoon.classifier import run_classifier_training

    run_classifier_training(shard_dir, model_dir, metrics_path, config)
    return model_dir
