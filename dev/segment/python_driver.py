#!/usr/bin/env python3
"""Drive the VibeFollow Segment-compatible API with a Python library that speaks
Segment's protocol, unchanged: segment-analytics-python (--library segment, the
default) or RudderStack's rudder-sdk-python (--library rudderstack).

    .venv/bin/python dev/segment/python_driver.py BASE_URL WRITE_KEY [RUN_ID]
        [--library segment|rudderstack] [--gzip | --no-gzip]

(or SEGMENT_BASE_URL / SEGMENT_WRITE_KEY / SEGMENT_RUN_ID / SEGMENT_LIBRARY /
SEGMENT_GZIP=1|0 in the environment). Without --gzip/--no-gzip the library's own
default applies (Segment's: off; RudderStack's: on).

The library is pointed at a small recording proxy that this script runs on
127.0.0.1 (first free port in 18081-18099, or --proxy-port / SEGMENT_PROXY_PORT);
the proxy forwards every request to BASE_URL unchanged and logs what the API
answered. Three phases, one library Client each:

  a  identify of two users (email, createdAt, company {name}, custom trait), flush
  b  one batch: identify of a third user, a track, an anonymous-only identify, flush
  c  identify of a fourth user; the proxy forwards the first attempt to the API and
     then answers 503 to the library, which retries the identical batch (same
     messageIds; X-Retry-Count: 1 from Segment's library, no such header from
     RudderStack's) — so the API receives the same batch twice; flush

Prints one JSON line: what was sent (user ids, message ids), every request the
proxy saw with the API's status and the status handed to the library, and the
library's name and version. Exit status: 0 all good; 1 the library reported an
error (on_error) or a delivery was not acknowledged; 2 usage / setup error;
3 a phase did not have the shape it is meant to test (e.g. no retry happened);
4 the overall time limit ran out.
"""

import argparse
import datetime as dt
import gzip as gziplib
import importlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

PORT_RANGE = range(18081, 18100)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class Library:
    """What differs between the libraries that speak Segment's protocol; the phases,
    the proxy and the report are shared. Their Client takes the same core arguments
    (write_key, host, gzip, on_error, max_retries, timeout, upload_size,
    upload_interval) and has the same identify/track/flush."""

    family: str
    package: str  # the distribution on PyPI
    module: str  # has Client; MODULE.version has VERSION
    name: str  # what the library writes in context.library.name
    gzip: bool  # the library's default
    retry_header: object  # X-Retry-Count on the first retry (None: the library sends none)
    traits_path: tuple  # where an identify message carries its traits
    client_options: dict = field(default_factory=dict)  # bounds only this library has

    def load(self):
        client = importlib.import_module(self.module).Client
        return client, importlib.import_module(self.module + ".version").VERSION

    def traits(self, msg):
        for key in self.traits_path:
            msg = msg.get(key) if isinstance(msg, dict) else None
        return msg if isinstance(msg, dict) else None


LIBRARIES = {
    "segment": Library(
        family="segment",
        package="segment-analytics-python",
        module="segment.analytics",
        name="analytics-python",
        gzip=False,
        retry_header="1",
        traits_path=("traits",),
        client_options={"max_total_backoff_duration": 30, "max_rate_limit_duration": 30},
    ),
    # Puts identify traits only in context.traits, gzips by default, sends no
    # X-Retry-Count and has no backoff or rate-limit budget to bound (README.md).
    "rudderstack": Library(
        family="rudderstack",
        package="rudder-sdk-python",
        module="rudderstack.analytics",
        name="analytics-python",
        gzip=True,
        retry_header=None,
        traits_path=("context", "traits"),
    ),
}


def fold_resends(message_ids_per_request):
    """The batches of a phase's requests, each run of identical resends (a retry) folded
    into one."""
    batches = []
    for ids in message_ids_per_request:
        if not batches or batches[-1] != ids:
            batches.append(ids)
    return batches


def phase_checks(sent, log, retry_header, batches_of=lambda ids: [ids]):
    """Did each phase have the shape it is meant to test? `sent`: phase → the messages
    the library was given, in order; `log`: the proxy's requests; `batches_of`: how the
    library groups a fresh client's messages (by default all in one batch)."""
    checks = {}
    for name, msgs in sent.items():
        want = batches_of([m["messageId"] for m in msgs])
        reqs = [r["message_ids"] for r in log if r["phase"] == name]
        checks[name + "_batched"] = bool(reqs) and fold_resends(reqs) == want
    c_reqs = [r for r in log if r["phase"] == "c"]
    checks["c_retried_identical_batch"] = (
        len(c_reqs) == 2
        and c_reqs[0]["client_status"] == 503
        and c_reqs[1]["x_retry_count"] == retry_header
        and c_reqs[0]["message_ids"] == c_reqs[1]["message_ids"]
    )
    return checks


class Recorder:
    """Shared state between the driver and the proxy thread."""

    def __init__(self, upstream, request_timeout):
        self.upstream = upstream.rstrip("/")
        self.request_timeout = request_timeout
        self.lock = threading.Lock()
        self.phase = None
        self.fail_after_forward = 0  # how many of the next requests to answer 503 after forwarding
        self.log = []

    def set_phase(self, phase, fail_after_forward=0):
        with self.lock:
            self.phase = phase
            self.fail_after_forward = fail_after_forward


def _message_ids(raw, encoding):
    try:
        data = gziplib.decompress(raw) if (encoding or "").lower() == "gzip" else raw
        body = json.loads(data)
        return [m.get("messageId") for m in body.get("batch", [])], len(data), body.get("sentAt")
    except Exception:  # the API judges malformed bodies; the log just says we could not read it
        return None, None, None


def make_handler(rec):
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            ids, decoded_len, sent_at = _message_ids(raw, self.headers.get("Content-Encoding"))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            entry = {
                "path": self.path,
                "x_retry_count": self.headers.get("X-Retry-Count"),
                "content_type": self.headers.get("Content-Type"),
                "content_encoding": self.headers.get("Content-Encoding"),
                "authorization_scheme": (self.headers.get("Authorization") or "").split(" ")[0] or None,
                "body_bytes": len(raw),
                "json_bytes": decoded_len,
                "sent_at": sent_at,
                "message_ids": ids,
            }
            req = urllib.request.Request(rec.upstream + self.path, data=raw, headers=headers, method="POST")
            t0 = time.monotonic()
            resp_headers = {}
            try:
                with urllib.request.urlopen(req, timeout=rec.request_timeout) as r:
                    status, body, resp_headers = r.status, r.read(), dict(r.headers.items())
            except urllib.error.HTTPError as e:
                status, body, resp_headers = e.code, e.read(), dict(e.headers.items())
            except Exception as e:  # API unreachable or timed out
                status, body = None, json.dumps({"code": "proxy_error", "message": str(e)}).encode()
            entry["upstream_ms"] = round((time.monotonic() - t0) * 1000, 1)
            entry["upstream_status"] = status
            try:
                entry["upstream_body"] = json.loads(body) if body else None
            except ValueError:
                entry["upstream_body"] = body.decode("utf-8", "replace")[:2000]
            if resp_headers.get("Retry-After"):
                entry["upstream_retry_after"] = resp_headers.get("Retry-After")
            with rec.lock:
                entry["phase"] = rec.phase
                # only a batch the API accepted is worth replaying
                inject = status is not None and 200 <= status < 300 and rec.fail_after_forward > 0
                if inject:
                    rec.fail_after_forward -= 1
                entry["seq"] = len(rec.log) + 1
                rec.log.append(entry)
            if inject:
                out_status, out_body = 503, json.dumps({"code": "injected", "message": "503 injected by driver proxy after forwarding"}).encode()
                out_headers = {"Content-Type": "application/json"}
            elif status is None:
                out_status, out_body, out_headers = 502, body, {"Content-Type": "application/json"}
            else:
                out_status, out_body = status, body
                out_headers = {k: v for k, v in resp_headers.items() if k.lower() in ("content-type", "retry-after")}
            entry["client_status"] = out_status
            self.send_response(out_status)
            for k, v in out_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(out_body)))
            self.end_headers()
            self.wfile.write(out_body)

    return Proxy


def start_proxy(rec, port):
    ports = [port] if port else list(PORT_RANGE)
    last = None
    for p in ports:
        try:
            srv = ThreadingHTTPServer(("127.0.0.1", p), make_handler(rec))
        except OSError as e:
            last = e
            continue
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv, p
    raise SystemExit("python_driver: no free proxy port in %s: %s" % (ports, last))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_url", nargs="?", default=os.environ.get("SEGMENT_BASE_URL"))
    ap.add_argument("write_key", nargs="?", default=os.environ.get("SEGMENT_WRITE_KEY"))
    ap.add_argument("run_id", nargs="?", default=os.environ.get("SEGMENT_RUN_ID"))
    ap.add_argument("--library", choices=sorted(LIBRARIES), default=os.environ.get("SEGMENT_LIBRARY") or "segment",
                    help="which family's library drives the API (default segment)")
    env_gzip = {"1": True, "0": False}.get(os.environ.get("SEGMENT_GZIP", ""))
    ap.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=env_gzip,
                    help="Client(gzip=...); default: the library's own default")
    ap.add_argument("--proxy-port", type=int, default=int(os.environ.get("SEGMENT_PROXY_PORT") or 0))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("SEGMENT_DRIVER_TIMEOUT") or 90), help="overall seconds")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="seconds per HTTP request")
    args = ap.parse_args()
    if not args.base_url or not args.write_key:
        ap.print_usage(sys.stderr)
        print("python_driver: BASE_URL and WRITE_KEY are required", file=sys.stderr)
        return 2
    run_id = (args.run_id or uuid.uuid4().hex[:12]).lower()
    if args.library not in LIBRARIES:
        print("python_driver: --library must be one of %s" % ", ".join(sorted(LIBRARIES)), file=sys.stderr)
        return 2
    lib = LIBRARIES[args.library]
    gzip = lib.gzip if args.gzip is None else args.gzip

    try:
        Client, VERSION = lib.load()
    except ImportError as e:
        print("python_driver: %s is not installed: %s" % (lib.package, e), file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.timeout
    rec = Recorder(args.base_url, args.request_timeout)
    srv, port = start_proxy(rec, args.proxy_port)
    proxy_url = "http://127.0.0.1:%d" % port

    errors = []
    sent = {}
    timed_out = False

    def user(n):
        uid = "%s-py-%s" % (run_id, n)
        return uid, "%s@example.com" % uid

    def traits(n, email):
        return {
            "email": email,
            "name": "Py Driver %s" % n,
            "createdAt": dt.datetime(2024, 5, 1, 12, 30, 0, tzinfo=dt.timezone.utc),
            "company": {"name": "Acme %s" % n},
            "plan": "pro",
        }

    def run_phase(name, calls, fail_after_forward=0):
        nonlocal timed_out
        rec.set_phase(name, fail_after_forward)
        phase_errors = []

        def on_error(e, batch):
            phase_errors.append({
                "phase": name,
                "error": str(e),
                "status": getattr(e, "status", None),
                "message_ids": [m.get("messageId") for m in batch],
            })

        client = Client(
            write_key=args.write_key,
            host=proxy_url,
            gzip=gzip,
            on_error=on_error,
            max_retries=3,
            timeout=args.request_timeout,
            # One batch per phase: the consumer sends as soon as it holds every message.
            upload_size=len(calls),
            upload_interval=10,
            **lib.client_options,
        )
        out = []
        for method, kwargs in calls:
            ok, msg = getattr(client, method)(**kwargs)
            if not ok:
                phase_errors.append({"phase": name, "error": "enqueue refused (queue full)"})
            traits = lib.traits(msg) if msg.get("type") == "identify" else None
            out.append({k: msg.get(k) for k in ("type", "userId", "anonymousId", "event", "messageId", "timestamp")}
                       | ({"email": traits.get("email")} if traits else {}))
        sent[name] = out
        flusher = threading.Thread(target=client.flush, daemon=True)
        flusher.start()
        flusher.join(max(0.0, deadline - time.monotonic()))
        if flusher.is_alive():
            timed_out = True
            phase_errors.append({"phase": name, "error": "flush did not finish before the overall timeout"})
        # Not client.join(): that waits out the consumer's idle upload_interval. The
        # queue is drained (flush returned), so just ask the consumers to stop.
        for consumer in client.consumers or []:
            consumer.pause()
        errors.extend(phase_errors)

    try:
        u1, e1 = user("a1")
        u2, e2 = user("a2")
        run_phase("a", [
            ("identify", {"user_id": u1, "traits": traits("a1", e1)}),
            ("identify", {"user_id": u2, "traits": traits("a2", e2)}),
        ])
        u3, e3 = user("b1")
        anon = "%s-py-anon" % run_id
        if not timed_out:
            run_phase("b", [
                ("identify", {"user_id": u3, "traits": traits("b1", e3)}),
                ("track", {"user_id": u3, "event": "Driver Batch Sent", "properties": {"run": run_id}}),
                ("identify", {"anonymous_id": anon, "traits": {"email": "%s@example.com" % anon, "plan": "free"}}),
            ])
        u4, e4 = user("c1")
        if not timed_out:
            run_phase("c", [("identify", {"user_id": u4, "traits": traits("c1", e4)})], fail_after_forward=1)
    except Exception as e:  # the library raised on a call (e.g. validation)
        errors.append({"error": "%s: %s" % (type(e).__name__, e)})
    finally:
        srv.shutdown()

    with rec.lock:
        log = list(rec.log)

    checks = phase_checks(sent, log, lib.retry_header)

    result = {
        "driver": "python",
        "library": {"family": lib.family, "package": lib.package, "version": metadata.version(lib.package),
                    "name": lib.name, "module_version": VERSION},
        "run_id": run_id,
        "base_url": args.base_url,
        "proxy": proxy_url,
        "gzip": gzip,
        "user_ids": [m["userId"] for p in sent.values() for m in p if m["type"] == "identify" and m.get("userId")],
        "anonymous_ids": [m["anonymousId"] for p in sent.values() for m in p if m.get("anonymousId")],
        "sent": sent,
        "message_ids": [m["messageId"] for p in sent.values() for m in p],
        "requests": log,
        "statuses": [r["client_status"] for r in log],
        "upstream_statuses": [r["upstream_status"] for r in log],
        "errors": errors,
        "checks": checks,
    }
    if timed_out:
        code = 4
    elif errors:
        code = 1
    elif not all(checks.values()):
        code = 3
    else:
        code = 0
    result["ok"] = code == 0
    result["exit_code"] = code
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return code


if __name__ == "__main__":
    code = main()
    # Daemon consumer threads may still be sleeping in a backoff after a timeout; do not wait for them.
    sys.stdout.flush()
    os._exit(code)
