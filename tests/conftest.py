from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped only when shared/ is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present at {path}")
    return path


@pytest.fixture(scope="session")
def small_synthetic():
    from genctr.data.sources import make_source
    from genctr.data.store import encode_source

    return encode_source(make_source("synthetic", rows=3000, users=200, items=150, seed=7))
