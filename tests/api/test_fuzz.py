"""Property-based fuzzing of the live API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, schema-valid and schema-violating, signed with a key of a
tenant of its own (the fuzzer rotates webhook secrets and creates jobs; other tests' tenants stay
untouched). No request may answer 5xx, and every documented response must match its schema.

Operations are collected from the app's own document, so each is a test of its own; the test then
checks that the running API serves that same document. Schemathesis' pytest plugin (``from_fixture``)
is not used: it reads a private pytest attribute that pytest 9 no longer has.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.main import create_app
from fakescope.service.tenants import create_api_key
from tests.utils.stack import ServiceStack, get_service_stack, png_bytes, wait_until

DOCUMENT = create_app().openapi()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = []
for _result in SCHEMA.get_all_operations():
    if not isinstance(_result, Ok):
        raise _result.err()  # a document schemathesis cannot read is a failure, not fewer operations
    OPERATIONS.append(_result.ok())
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_key(request: pytest.FixtureRequest) -> str:
    with get_service_stack(request).svc.session() as session:
        return create_api_key(session, tenant_name=f"fuzz-{uuid.uuid4().hex[:8]}")[1]


@pytest.fixture(scope="module")
def fuzz_job(request: pytest.FixtureRequest, fuzz_key: str) -> str:
    """A finished job of the fuzzing tenant, so job routes are fuzzed on a real job as well as unknown ids."""
    service_stack = get_service_stack(request)
    with httpx.Client(base_url=service_stack.api_url, headers={"X-API-Key": fuzz_key}, timeout=60) as c:
        files = [("files", ("a.png", png_bytes(11), "image/png")), ("files", ("b.txt", b"not an image", "text/plain"))]
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["state"] == "partially_succeeded", 120, "the job")
    return job_id


def test_the_live_api_serves_the_fuzzed_document(service_stack: ServiceStack) -> None:
    assert httpx.get(f"{service_stack.api_url}/openapi.json", timeout=30).json() == DOCUMENT


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_operation_answers_5xx(
    operation: schemathesis.APIOperation, service_stack: ServiceStack, fuzz_key: str, fuzz_job: str
) -> None:
    modes = [operation.as_strategy(generation_mode=mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    if "{job_id}" in operation.path:
        modes.append(operation.as_strategy(path_parameters={"job_id": fuzz_job}))
    headers = {"X-API-Key": fuzz_key}

    @given(case=st.one_of(modes))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=service_stack.api_url,
            headers=headers,
            timeout=60,
            checks=[not_a_server_error, response_schema_conformance],
        )

    fuzz()
