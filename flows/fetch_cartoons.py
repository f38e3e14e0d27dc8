"""Flow for DVC stage fetch_cartoons: see tasks/cartoon/fetch.py."""
from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.fetch import fetch_cartoons as fetch


@flow(name="fetch_cartoons")
def fetch_cartoons(out_dir: str, source: str = "synthetic", num_images: int = 3000, seed: int = 0,
                   workers: int = 0, urls: dict | None = None, sha256: dict | None = None) -> dict:
    return fetch(out_dir, source, num_images, seed, workers, urls, sha256)


if __name__ == "__main__":
    run_stage(fetch_cartoons, "fetch_cartoons")
