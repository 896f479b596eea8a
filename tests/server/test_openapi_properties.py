"""Property-based tests of the API from its own OpenAPI schema (Schemathesis + Hypothesis)
against a real uvicorn on loopback with the real models: whatever the generated request, no
HTTP 5xx, and every response matches the schema. A CI-fast subset: a few examples an
operation, derandomized (the same examples every run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from agelens.server.app import create_app
from agelens.server.connections import uvicorn_limits
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.server.conftest import uvicorn_in_thread

EXAMPLES_PER_OPERATION = 5


@pytest.fixture(scope="module")
def live_base_url(model_pool: ModelPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on a free loopback port: URL input off (generated URLs must never reach
    the network), rate limits off (Hypothesis sends many requests)."""
    service_settings = Settings(
        url_fetch_enabled=False,
        rate_limit_per_minute=0,
        auth_failures_per_minute=0,
        body_timeout_seconds=5,
        data_dir=Path(tmp_path_factory.mktemp("data")),
    )
    app = create_app(service_settings, pool=model_pool)
    limits = uvicorn_limits(service_settings)
    with uvicorn_in_thread(app, name="uvicorn-schemathesis", **limits) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def api_schema(live_base_url: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_base_url}/openapi.json")


def test_no_5xx_and_every_response_matches_the_schema(
    api_schema: schemathesis.schemas.BaseSchema,
) -> None:
    # Each operation in turn (Schemathesis's lazy pytest integration does not run on this
    # pytest); a failure names the operation and Hypothesis prints the smallest example.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                checks=[not_a_server_error, response_schema_conformance], timeout=60
            )

        check()
