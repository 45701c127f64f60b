"""The SDK keeps its own copy of the error code list (it must not import the server): it must
equal server/core/errors.py ErrorCode, code for code, with the same messages and close codes, and
give each code its exception class (docs/protocol.md section 8)."""

from __future__ import annotations

import sys

from server.core.errors import ErrorCode
from tests.serverproc import REPO

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402
from tandem_client import errors  # noqa: E402


def test_sdk_code_list_equals_the_server_error_codes_in_order() -> None:
    assert [code for code, _, _ in errors.ERROR_CODES] == [c.value for c in ErrorCode]
    for (code, message, close_code), server_code in zip(errors.ERROR_CODES, ErrorCode, strict=True):
        assert (code, message, close_code) == (server_code.value, server_code.message, server_code.close_code)


def test_each_code_has_its_exception_class_carrying_code_message_and_close_code() -> None:
    for server_code in ErrorCode:
        name = "".join(part.capitalize() for part in server_code.value.split("_"))
        cls = getattr(tandem_client, name)
        assert cls is errors.ERROR_CLASSES[server_code.value] and issubclass(cls, tandem_client.TandemError)
        error = errors.error_from_frame({"type": "error", "re": 1, "code": server_code.value, "message": "m", "details": {"x": 1}})
        assert type(error) is cls
        assert (error.code, error.message, error.details, error.close_code) == (server_code.value, "m", {"x": 1}, server_code.close_code)
        assert cls().message == server_code.message
    assert tandem_client.DocNotOpen.code == "doc_not_open"
    assert isinstance(tandem_client.NotFound(), tandem_client.ClientError)


def test_an_unknown_code_from_a_newer_server_is_a_plain_tandem_error_keeping_the_code() -> None:
    error = errors.error_from_frame({"type": "error", "re": None, "code": "brand_new", "message": "New."})
    assert type(error) is tandem_client.TandemError
    assert (error.code, error.message) == ("brand_new", "New.")


def test_sdk_does_not_import_the_server() -> None:
    for path in (REPO / "clients" / "tandem_client").glob("*.py"):
        source = path.read_text()
        assert "from server" not in source and "import server" not in source, path
