#!/usr/bin/env python3
"""Capturing stand-in for Segment's tracking API, used to learn what the real
libraries send (see README.md). Standard library only.

Every request that is not under /_capture/ is recorded (method, path, every
header, the raw body as base64, and the decoded JSON after undoing
Content-Encoding: gzip) and answered from a script of statuses; once the script
is used up the answer is 200 {"success": true}.

    python3 dev/segment/capture_server.py --port 18080 --log /tmp/capture.jsonl

Control (JSON in, JSON out):
    GET  /_capture/requests          every recorded request so far
    POST /_capture/reset             forget recorded requests and the script
    POST /_capture/script            {"responses": [{"status": 503}, {"status": 429,
                                      "headers": {"Retry-After": "2"}}, ...]}
                                     answers for the next requests, in order
"""

import argparse
import base64
import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
RECORDED = []
SCRIPT = []
LOG_PATH = None


def _decode(raw, encoding):
    info = {"content_encoding": encoding or None, "raw_bytes": len(raw)}
    data = raw
    if (encoding or "").lower() == "gzip":
        try:
            data = gzip.decompress(raw)
            info["decompressed_bytes"] = len(data)
        except OSError as e:
            info["decode_error"] = "gzip: %s" % e
            return info
    try:
        info["json"] = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        info["decode_error"] = "json: %s" % e
        info["text"] = data.decode("utf-8", "replace")[:4000]
    return info


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "segment-capture/1"

    def log_message(self, fmt, *args):  # keep stderr quiet; the log file has it all
        pass

    def _send(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _control(self, raw):
        global SCRIPT
        if self.path == "/_capture/requests":
            with LOCK:
                return self._send(200, list(RECORDED))
        if self.path == "/_capture/reset":
            with LOCK:
                RECORDED.clear()
                SCRIPT = []
            return self._send(200, {"ok": True})
        if self.path == "/_capture/script":
            spec = json.loads(raw or b"{}")
            with LOCK:
                SCRIPT = list(spec.get("responses", []))
            return self._send(200, {"ok": True, "queued": len(SCRIPT)})
        return self._send(404, {"error": "unknown control path"})

    def _handle(self):
        raw = self._read_body()
        if self.path.startswith("/_capture/"):
            return self._control(raw)
        with LOCK:
            answer = SCRIPT.pop(0) if SCRIPT else {"status": 200}
            entry = {
                "seq": len(RECORDED) + 1,
                "t": round(time.time(), 3),
                "method": self.command,
                "path": self.path,
                "http_version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_b64": base64.b64encode(raw).decode(),
                "answered": answer,
            }
            entry.update(_decode(raw, self.headers.get("Content-Encoding")))
            RECORDED.append(entry)
            if LOG_PATH:
                with open(LOG_PATH, "a") as f:
                    f.write(json.dumps(entry) + "\n")
        status = int(answer.get("status", 200))
        body = answer.get("body")
        if body is None:
            body = {"success": True} if status < 300 else {"code": "error", "message": "scripted %d" % status}
        self._send(status, body, answer.get("headers"))

    do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle


def main():
    global LOG_PATH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--log", help="append each recorded request as a JSON line")
    args = ap.parse_args()
    LOG_PATH = args.log
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    print("capture server on http://%s:%d" % (args.host, args.port), file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
