"""Schemathesis against the served OpenAPI document: no 5xx, every answer conforms to the schema.

A real ``tailor serve`` process (granian) on its own chdb and Redis prefix, with one key per
scope in ``TAILOR_AUTH_API_KEYS``, is fuzzed operation by operation with schema-valid and
schema-invalid requests, once with each key (admin, ingest, decide, report). Checked: no server
error; every status code, content type, header and body is the one the document declares
(refusals included: a key outside an operation's ``x-tailor-scopes`` gets a documented 403).
Each scope's run is bounded: a few examples per operation and mode, fewer where the key is
refused anyway (the guard answers before the body is read). Not checked:
``positive_data_acceptance`` — the document cannot express every rule the API enforces (patterns
on list items and map values, cross-field rules such as "decision_id or unit_id"), so some
"schema-valid" requests are rightly refused with a documented 422.
"""

from __future__ import annotations

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
REFUSED_EXAMPLES = 2
SECRETS = {
    "admin": "fuzz-admin-key",
    "ingest": "fuzz-ingest-key",
    "decide": "fuzz-decide-key",
    "report": "fuzz-report-key",
}


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    """One server for the whole fuzz run, with one bootstrap key per scope."""
    data = tmp_path_factory.mktemp("fuzz")
    keys = ",".join(f"{secret}:{scope}" for scope, secret in SECRETS.items())
    env = server_env(
        redis_url,
        "fz" + uuid.uuid4().hex[:10],
        data,
        TAILOR_LOG_LEVEL="warning",
        TAILOR_AUTH_API_KEYS=keys,
    )
    process = TailorServer(env, data / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scope", list(SECRETS))
def test_no_server_errors_and_conforming_answers(server: TailorServer, scope: str) -> None:
    """Every operation, fuzzed with valid and invalid inputs under a key of ``scope``, answers
    without a 5xx and as its OpenAPI document says (status code, content type, headers, body
    schema). The run is bounded by its example counts, not by a clock (a wall-clock bound failed
    on a loaded machine: 79 s against 60)."""
    schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
    headers = {"Authorization": f"Bearer {SECRETS[scope]}"}
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        scopes = operation.definition.raw.get("x-tailor-scopes")
        admitted = scope == "admin" or scopes is None or scope in scopes
        examples = EXAMPLES_PER_MODE if admitted else REFUSED_EXAMPLES
        # Only bodies can be made schema-invalid in a meaningful way (paths are plain strings).
        modes = [GenerationMode.POSITIVE]
        if len(operation.body) and admitted:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS)

            try:
                fuzz()
            except Exception as exc:  # collected, so one run reports every failing operation
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:1500]
    assert operations >= 25, "the document lists every API operation"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert "Traceback" not in server.output(), server.output()[-3000:]
