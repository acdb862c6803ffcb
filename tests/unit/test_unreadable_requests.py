"""What the server protocol answers when httptools cannot read a request: the client's malformed
request is a 400 whose reason quotes nothing of it; an exception of the process's own, raised in a
parser callback, is a 500 logged with its traceback."""

from __future__ import annotations

import logging

import httptools
import pytest

from shared.errors import BadRequest, PorticoError
from shared.serving.protocol import _unreadable


class _Callbacks:
    def __init__(self, on_url: object) -> None:
        self.on_url = on_url


def parser_error(on_url: object, request: bytes) -> httptools.HttpParserError:
    parser = httptools.HttpRequestParser(_Callbacks(on_url))
    with pytest.raises(httptools.HttpParserError) as raised:
        parser.feed_data(request)
    return raised.value


def test_a_request_that_is_not_http_is_the_clients_and_quotes_nothing_of_it(caplog):
    unknown_method = parser_error(lambda url: None, b"FOO / HTTP/1.1\r\n\r\n")
    no_url = parser_error(httptools.parse_url, b"GET http://[::1/?token=secret HTTP/1.1\r\n\r\n")
    for error in (unknown_method, no_url):
        reason, answer = _unreadable(error)
        assert answer is BadRequest
        assert "secret" not in reason
    assert "HttpParserInvalidURLError" in _unreadable(no_url)[0]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_an_exception_of_the_process_in_a_callback_is_a_500_with_its_traceback(caplog):
    def broken(url: bytes) -> None:
        raise RuntimeError("a fault of ours")

    reason, answer = _unreadable(parser_error(broken, b"GET / HTTP/1.1\r\n\r\n"))
    assert "a fault of ours" not in reason
    assert answer is PorticoError
    assert answer.status_code == 500
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
