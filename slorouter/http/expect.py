"""The one touch of aiohttp's server internals: the application's request factory.

aiohttp answers an ``Expect`` header it does not know with 417 *before* any route
handler or middleware runs, echoing the value in the body; a value with non-UTF-8 bytes
makes that echo fail, and the client gets a 500. aiohttp's public hook, a route's
``expect_handler``, does not cover the 404 and 405 answers (their system route always
uses the default handler), so :func:`escape_expect_header` wraps the private
``Application._make_request`` to make such a value ASCII (backslash escapes) as the
request is built: the client then gets the 417.

``tests/integration/test_aiohttp_private.py`` fails if aiohttp renames or re-shapes the
factory (the patch would then silently stop working), and :func:`escape_expect_header`
raises at build time if the attribute is gone.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy


def escape_expect_header(app: web.Application) -> None:
    make = getattr(app, "_make_request", None)
    if make is None:
        raise RuntimeError(
            "aiohttp.web.Application has no _make_request any more: update slorouter/http/expect.py"
        )

    def make_request(message: RawRequestMessage, *args: Any, **kw: Any) -> web.Request:
        expect = message.headers.get("Expect")
        if expect is not None and not expect.isascii():
            headers = CIMultiDict(message.headers)
            headers["Expect"] = expect.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            message = message._replace(headers=CIMultiDictProxy(headers))
        return make(message, *args, **kw)  # type: ignore[no-any-return]

    app._make_request = make_request  # type: ignore[method-assign]
