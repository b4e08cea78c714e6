"""API Gateway HTTP API, payload format version 2.0: HTTP request → event, and the
function's answer → HTTP response."""
import base64
import json
import time
import uuid
from urllib.parse import parse_qsl

from .runtime_api import ACCOUNT

DOMAIN = "127.0.0.1"
INTERNAL_SERVER_ERROR = (500, {"message": "Internal Server Error"})
SERVICE_UNAVAILABLE = (503, {"message": "Service Unavailable"})
# Framing is ours to set: the body we send is already decoded and measured.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}


class MalformedResponse(Exception):
    """The function answered something API Gateway cannot turn into an HTTP response."""


def request_event(method, target, headers, body, source_ip, port):
    """The event API Gateway sends for one HTTP request; `headers` are (name, value) pairs."""
    raw_path, _, raw_query = target.partition("?")
    cookies = [c.strip() for name, value in headers if name.lower() == "cookie" for c in value.split(";") if c.strip()]
    event_headers = joined_headers([(n, v) for n, v in headers if n.lower() != "cookie"])
    # API Gateway sets these itself, whatever the client sent.
    event_headers.update({"x-forwarded-for": source_ip, "x-forwarded-port": str(port), "x-forwarded-proto": "http"})
    now = time.time()
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": event_headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": DOMAIN,
            "domainPrefix": DOMAIN.split(".")[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": event_headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    query = query_parameters(raw_query)
    if query:
        event["queryStringParameters"] = query
    if body:
        add_body(event, body)
    return event


def joined_headers(pairs):
    """Lower-case names; a repeated header becomes one, its values joined with commas."""
    joined = {}
    for name, value in pairs:
        name = name.lower()
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return joined


def query_parameters(raw_query):
    return joined_headers(parse_qsl(raw_query, keep_blank_values=True))


def add_body(event, body):
    try:
        event["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True


def http_response(payload):
    """(status, [(name, value)], body bytes) for the function's answer.

    As API Gateway does, an answer without `statusCode` is a 200 whose body is that JSON.
    """
    try:
        result = json.loads(payload)
    except ValueError as e:
        raise MalformedResponse(f"not JSON: {e}") from None
    if not isinstance(result, dict) or "statusCode" not in result:
        body = result.encode() if isinstance(result, str) else payload
        return 200, [("content-type", "application/json")], body
    try:
        return int(result["statusCode"]), response_headers(result), response_body(result)
    except (TypeError, ValueError, AttributeError) as e:
        raise MalformedResponse(str(e)) from None


def response_headers(result):
    headers = [(name, str(value)) for name, value in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers += [(name, str(value)) for value in values]
    headers += [("set-cookie", cookie) for cookie in result.get("cookies") or []]
    return [(name, value) for name, value in headers if name.lower() not in FRAMING_HEADERS]


def response_body(result):
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        return base64.b64decode(body, validate=True)
    return body.encode()
