"""Fixtures shared by the data tests."""

import pytest

from tests.helpers.cartoon import write_cartoon


@pytest.fixture
def cartoon_dir(tmp_path):
    """A 40-image Cartoon Set-format folder with a 3-attribute schema."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(40):
        write_cartoon(raw, f"cs{i}", [i % 5, i % 3, i % 2], seed=i)
    return raw
