"""A customer's webhook endpoint on this machine, and the api calls that subscribe it:
shared by `make webhook-latency` and `make webhook-schedule`."""
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def listen(answer):
    """A listener on 127.0.0.1: each POST's path, lower-cased headers and body go to
    `answer`, whose return is the status sent back, or (status, headers). Returns the
    running server."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            answered = answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            status, headers = answered if isinstance(answered, tuple) else (answered, {})
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client gave up waiting (a timeout the caller meant)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def call(api, key, method, path, body):
    """One api call with `key`: (status, JSON body)."""
    request = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read() or b"null")


def subscribe(api, key, server, webhook_id, events, path="/hooks"):
    """PUTs endpoint `webhook_id` at `server`'s `path` for `events`; its secret."""
    url = f"http://127.0.0.1:{server.server_port}{path}"
    status, created = call(api, key, "PUT", f"/api/v1/webhooks/{webhook_id}", {"url": url, "events": events})
    if status != 201:
        raise SystemExit(f"PUT webhook {webhook_id} answered {status}")
    return created["data"]["secret"]
