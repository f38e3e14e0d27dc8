"""Fixtures shared by the training tests (module-scoped: each test file builds its own once)."""

import pytest

from tests.helpers.dreambooth import make_world
from tests.helpers.latents import encode_latents, make_aligned, save_tiny_vae


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """A folder holding vae/ (the tiny f=2 VAE at 16 px) and latents/ (24 tiny aligned faces encoded by it),
    as train_ldm reads them."""
    root = tmp_path_factory.mktemp("ldm")
    aligned = make_aligned(root / "aligned", n=24, size=16, shard_size=6)
    vae_dir = save_tiny_vae(root / "vae", seed=0, resolution=16)
    encode_latents(
        str(aligned), str(vae_dir), str(root / "latents"), resolution=16, flip=True, batch_size=8, progress=False
    )
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """DreamBooth's inputs: a tiny base model (base/), subject latents by its VAE (subject/), and class
    samples from it (class/); see tests.helpers.dreambooth.make_world."""
    return make_world(tmp_path_factory.mktemp("db"))
