from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.eval_fake_openai import serve


@pytest.fixture(scope="session")
def fake_server() -> Iterator[tuple[str, object]]:
    with serve() as (url, app):
        yield url, app
