"""Flow for DVC stage fetch_cartoons: see tasks/cartoon/fetch.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.config import FetchCartoonsConfig
from tasks.cartoon.stages import fetch_cartoons_task


@flow(name="fetch_cartoons")
def fetch_cartoons(out_dir: str, params: dict) -> dict:
    return fetch_cartoons_task(out_dir, FetchCartoonsConfig.from_params(params, "fetch_cartoons"))


if __name__ == "__main__":
    run_stage(fetch_cartoons, "fetch_cartoons")
