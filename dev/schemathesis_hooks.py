"""Schemathesis hooks for the local stack.

cargo lambda watch, the local stand-in for API Gateway, answers 500 by itself (before
the function runs) to a JSON body or a header value that is not valid UTF-8. Such
requests are dropped here so that every 5xx schemathesis reports is the service's own.
"""
import schemathesis


def _is_utf8(value):
    if isinstance(value, (bytes, bytearray)):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


@schemathesis.hook
def filter_body(ctx, body):
    return _is_utf8(body)


@schemathesis.hook
def filter_headers(ctx, headers):
    return all(isinstance(v, str) and v.isascii() for v in (headers or {}).values())
