"""Flow for DVC stage fetch_cartoons: see tasks/cartoon/fetch.py."""

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.cartoon.config import FetchCartoonsConfig
from tasks.cartoon.fetch import fetch_cartoons as fetch
from tasks.download.fetch import DownloadError


def _network_trouble(task, task_run, state) -> bool:
    """Retry the stage only for network trouble; a bad checksum or a bad param is final."""
    try:
        state.result()
    except DownloadError as exc:
        return "could not download" in str(exc)
    except Exception:
        return False
    return False


fetch_cartoons_task = stage_task(
    "fetch_cartoons", retries=2, retry_delay_seconds=30, retry_condition_fn=_network_trouble
)(fetch)


@flow(name="fetch_cartoons")
def fetch_cartoons(out_dir: str, params: dict) -> dict:
    return fetch_cartoons_task(out_dir, FetchCartoonsConfig.from_params(params, "fetch_cartoons"), "data/downloads")


if __name__ == "__main__":
    run_stage(fetch_cartoons, "fetch_cartoons")
