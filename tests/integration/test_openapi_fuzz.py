"""Schemathesis against the served OpenAPI document: no 5xx, every answer conforms to the schema.

A real ``tailor serve`` process (granian) on its own chdb and Redis prefix is fuzzed operation by
operation with schema-valid and schema-invalid requests. Checked: no server error; every status
code, content type, header and body is the one the document declares. Not checked:
``positive_data_acceptance`` — the document cannot express every rule the API enforces (patterns
on list items and map values, cross-field rules such as "decision_id or unit_id"), so some
"schema-valid" requests are rightly refused with a documented 422.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.processes import TailorServer, server_env

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES_PER_MODE = 6


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    """One server for the whole fuzz run (open auth: the access tests cover keys)."""
    data = tmp_path_factory.mktemp("fuzz")
    env = server_env(redis_url, "fz" + uuid.uuid4().hex[:10], data, TAILOR_LOG_LEVEL="warning")
    process = TailorServer(env, data / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.mark.slow
def test_no_server_errors_and_conforming_answers(server: TailorServer) -> None:
    """Every operation, fuzzed with valid and invalid inputs, answers without a 5xx and as its
    OpenAPI document says (status code, content type, headers, body schema)."""
    schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        # Only bodies can be made schema-invalid in a meaningful way (paths are plain strings).
        modes = [GenerationMode.POSITIVE]
        if len(operation.body):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=server.url, checks=CHECKS)

            try:
                fuzz()
            except Exception as exc:  # collected, so one run reports every failing operation
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:1500]
    assert operations >= 25, "the document lists every API operation"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert time.monotonic() - started < 60, "keep the fuzz run bounded"
    assert "Traceback" not in server.output(), server.output()[-3000:]
