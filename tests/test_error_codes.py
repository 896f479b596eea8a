"""One error-code -> HTTP status table (agelens.error_codes) for the service and the client."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import agelens.server
from agelens import client
from agelens import errors as engine_errors
from agelens.error_codes import DEFAULT_STATUS, HTTP_STATUS, http_status
from agelens.errors import AgelensError
from agelens.server.errors import ApiError, status_of


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def _server_api_errors() -> set[type[ApiError]]:
    """Every ApiError subclass of the service, after importing each of its modules."""
    for module in pkgutil.walk_packages(agelens.server.__path__, "agelens.server."):
        importlib.import_module(module.name)
    return {ApiError, *_all_subclasses(ApiError)}


def test_every_api_error_answers_its_codes_status_from_the_table() -> None:
    api_errors = _server_api_errors()
    assert len(api_errors) >= 14  # the service's errors were found, not an empty set
    for error_type in api_errors:
        assert error_type.code in HTTP_STATUS, error_type
        assert error_type.status == HTTP_STATUS[error_type.code], error_type
        assert status_of(error_type("message")) == HTTP_STATUS[error_type.code]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (engine_errors.ImageDecodeError("bad"), 422),
        (engine_errors.ImageTooLargeError("huge"), 413),
        (engine_errors.UnknownModelError("who"), 400),
        (engine_errors.ModelNotFetchedError("later"), 503),
        (engine_errors.ModelFetchError("down"), 503),
        (engine_errors.UrlForbiddenError("private"), 400),
        (engine_errors.UrlFetchError("gone"), 422),
        (engine_errors.MissingExtraError("extra"), 500),
    ],
)
def test_engine_errors_reaching_the_service_answer_the_tables_status(
    error: AgelensError, status: int
) -> None:
    assert HTTP_STATUS[error.code] == status
    assert status_of(error) == status


def test_a_code_outside_the_table_answers_400() -> None:
    assert http_status("zip_member_error") == DEFAULT_STATUS == 400
    assert status_of(AgelensError("plain")) == 400


@pytest.mark.parametrize("code", sorted(HTTP_STATUS))
def test_the_client_gives_each_code_its_status(code: str) -> None:
    error = client.error_for(code, "message")
    assert (error.code, error.status) == (code, HTTP_STATUS[code])
    # the status the response carried wins over the usual one
    assert client.error_for(code, "message", status=599).status == 599


def test_every_code_the_client_types_is_in_the_table() -> None:
    typed = set(client._ERRORS_BY_CODE)
    assert typed <= set(HTTP_STATUS), typed - set(HTTP_STATUS)
    server_codes = {error_type.code for error_type in _server_api_errors()}
    # the codes the client raises as plain ClientError are only the service's own failures
    assert server_codes - typed <= {"internal_error", "request_timeout", "examples_unavailable"}


def test_an_unknown_code_has_no_usual_status() -> None:
    error = client.error_for("brand_new_code", "message")
    assert type(error) is client.ClientError
    assert error.status is None
