"""Schema-driven fuzzing (schemathesis) of the running service's own OpenAPI page: no generated
request, valid or not, gets a 5xx, and every refusal is one of our typed errors.

Each operation gets a bounded number of generated requests (PEXIR_FUZZ_EXAMPLES per generation
mode, positive and negative; default 30); the whole run takes about a minute on two cores. The
headers the OpenAPI page cannot describe (the bearer key, X-User-Id, Accept) are fuzzed apart.
A 503 is allowed only as `overloaded` (the test service admits one try-on at a time, plus one
queued).

The cases are drawn with `operation.as_strategy()` under hypothesis rather than with
`schemathesis.pytest.from_fixture(...).parametrize()`: that lazy loader sets `Function._nodeid`,
which pytest 9 no longer has.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from pexir_tryon.errors import ERROR_KINDS

from conftest import SERVICE_KEY

pytestmark = pytest.mark.serve

EXAMPLES = int(os.environ.get("PEXIR_FUZZ_EXAMPLES", "30"))
FUZZ_USER = "fuzzer"  # its own user, so a generated purge or delete never touches another test's data
AUTH = {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": FUZZ_USER}

# The operations on the OpenAPI page; test_the_fuzzed_operations_are_all_there_are keeps this in step.
OPERATIONS = [
    "POST /v1/tryon",
    "POST /v1/uploads",
    "GET /v1/results/{result_id}",
    "POST /v1/results/{result_id}/save",
    "DELETE /v1/results/{result_id}",
    "DELETE /v1/users/{user_id}",
    "GET /v1/users/{user_id}/export",
    "GET /healthz",
    "HEAD /healthz",
    "GET /readyz",
    "HEAD /readyz",
]


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service}/openapi.json", timeout=60)


def test_the_fuzzed_operations_are_all_there_are(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def assert_typed_answer(case, response) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}\n{case.as_curl_command(headers=AUTH)}"
    if status < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, where
    code = body["error"]["code"]
    assert code in ERROR_KINDS and body["error"]["message"], where
    assert ERROR_KINDS[code].http_status == status, where
    if status == 503:
        assert code == "overloaded" and int(response.headers["retry-after"]) > 0, where
    else:
        assert status < 500, where


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_generated_request_gets_a_server_error(api_schema, service, label):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=2 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call(base_url=service, headers=AUTH, timeout=120)
        assert_typed_answer(case, response)

    fuzz()


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)


@given(
    authorization=st.one_of(HEADER_TEXT, HEADER_TEXT.map(lambda t: f"Bearer {t}"), st.just(f"Bearer {SERVICE_KEY}")),
    user=st.one_of(HEADER_TEXT, st.from_regex(r"[A-Za-z0-9._@:-]{1,140}", fullmatch=True)),
    accept=st.one_of(HEADER_TEXT, st.sampled_from(["image/jpeg", "application/json", "*/*", "image/png;q=0.1, image/jpeg"])),
    path=st.sampled_from(["/v1/results/res_missing", "/v1/users/fuzzer/export", "/v1/uploads"]),
)
@settings(max_examples=2 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_header_value_gets_a_server_error(service, authorization, user, accept, path):
    import httpx

    headers = {"Authorization": authorization.strip().encode("latin-1"), "X-User-Id": user.strip().encode("latin-1"),
               "Accept": accept.strip().encode("latin-1")}
    method = "POST" if path == "/v1/uploads" else "GET"
    response = httpx.request(method, f"{service}{path}", headers=headers, timeout=60)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        code = response.json()["error"]["code"]
        assert ERROR_KINDS[code].http_status == response.status_code
