"""The error-code table: every code has an HTTP status and a what-to-do line, errors survive
pickling (they cross Ray process boundaries), and docs/errors.md is generated from the table."""

from __future__ import annotations

import importlib.util
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pexir_tryon.errors import ERROR_KINDS, TryOnError, error_table_markdown

ROOT = Path(__file__).resolve().parents[1]

# The codes the image decoder raises (and the catch-all): clients depend on them and their status.
STABLE = {
    "invalid_request": 422,
    "invalid_image": 400,
    "unsupported_image": 415,
    "image_too_large": 413,
    "image_too_small": 422,
    "internal_error": 500,
}


def _load_script():
    spec = importlib.util.spec_from_file_location("error_table", ROOT / "scripts" / "error_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("code", ERROR_KINDS)
def test_every_code_has_an_error_status_and_what_to_do(code):
    kind = ERROR_KINDS[code]
    assert kind.code == code
    assert re.fullmatch(r"[a-z][a-z0-9_]*", code)
    assert 400 <= kind.http_status <= 599
    assert kind.what_to_do.strip() and kind.what_to_do[0].isupper() and kind.what_to_do.rstrip().endswith((".", ")"))
    assert "\n" not in kind.what_to_do


def test_stable_codes_are_present_with_their_status():
    assert {code: ERROR_KINDS[code].http_status for code in STABLE if code in ERROR_KINDS} == STABLE


def test_internal_error_is_the_only_500():
    assert [code for code, kind in ERROR_KINDS.items() if kind.http_status == 500] == ["internal_error"]


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        TryOnError("no_such_code", "x")


@pytest.mark.parametrize("code", ERROR_KINDS)
def test_try_on_error_pickles_round_trip(code):
    error = TryOnError(code, f"message for {code} | with ünïcode", retry_after_s=7 if code == "overloaded" else None)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(copy) is TryOnError
        assert (copy.code, copy.message, copy.retry_after_s, copy.http_status) == (
            error.code, error.message, error.retry_after_s, ERROR_KINDS[code].http_status)
        assert str(copy) == str(error) and copy.to_body() == error.to_body() and copy.cli_line() == error.cli_line()


def test_body_and_cli_line():
    error = TryOnError("image_too_small", "The person image is 10x10.")
    assert error.to_body() == {"error": {"code": "image_too_small", "message": "The person image is 10x10."}}
    assert error.cli_line() == "error[image_too_small]: The person image is 10x10."
    assert error.http_status == 422


def test_markdown_table_lists_every_code_once():
    rows = [line for line in error_table_markdown().splitlines()[2:]]
    assert len(rows) == len(ERROR_KINDS)
    for row, kind in zip(rows, ERROR_KINDS.values()):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert cells[:2] == [f"`{kind.code}`", str(kind.http_status)]
        assert cells[2].replace("\\|", "|") == kind.what_to_do


def test_docs_errors_md_is_up_to_date():
    page = _load_script().render_page()
    assert error_table_markdown() in page
    current = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert current == page, "docs/errors.md is out of date; run: python scripts/error_table.py --write"


def test_error_table_script_prints_the_page_and_checks():
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "error_table.py")], capture_output=True, text=True,
                             timeout=60, check=True)
    assert printed.stdout == (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    checked = subprocess.run([sys.executable, str(ROOT / "scripts" / "error_table.py"), "--check"], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
