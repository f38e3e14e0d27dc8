"""Suite-wide set-up (the repo on sys.path, Hugging Face offline) and the fixtures every group may use.

Layout: tests/<group>/test_*.py by the behaviour they protect (data, training, models, evaluation,
pipeline, orchestration); shared plain helpers in tests/helpers/ (imported as tests.helpers.<module>);
fixtures used across one group in that group's conftest.py.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def tiny_unet():
    """The suite's tiny-UNet factory (tests.helpers.models.tiny_unet): `tiny_unet(channels=4, groups=8,
    attention=True, seed=0)`; code outside a test (module helpers) calls tests.helpers.models.tiny_unet."""
    from tests.helpers.models import tiny_unet as factory  # torch and diffusers only where a test asks

    return factory
