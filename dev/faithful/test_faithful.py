"""python3 -m unittest discover -s dev/faithful

A fake `bootstrap` in Python drives the fleet through the Runtime API."""
import base64
import json
import selectors
import socket
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faithful import Fleet, FleetError, FunctionConfig  # noqa: E402

# The runtime loop of a Lambda custom runtime. Event fields steer it: `sleep_ms` delays
# the answer; `marker` is a file a background thread writes ~50 ms after the answer is
# posted (work left running after answering); `linger_ms` delays the next `/next` after
# answering (so only a freeze on the answer itself stops the marker); `wait_for` waits up
# to 2 s for a file to appear before answering. An API Gateway event is echoed back in an
# HTTP response; one with an `X-Exit` header makes the process exit (a crash) instead.
FAKE_BOOTSTRAP = '''#!{python}
import base64, json, os, threading, time, urllib.error, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"


def write_later(path):
    time.sleep(0.05)
    open(path, "w").close()


def wait_for(path):
    deadline = time.monotonic() + 2
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def echo(event):
    return {{
        "statusCode": 201,
        "headers": {{"content-type": "application/json", "x-echo": "yes", "content-length": "1"}},
        "multiValueHeaders": {{"x-multi": ["1", "2"]}},
        "cookies": ["session=abc; Path=/"],
        "body": base64.b64encode(json.dumps(event).encode()).decode(),
        "isBase64Encoded": True,
    }}


print("init", os.getpid(), flush=True)
while True:
    with urllib.request.urlopen(API + "/invocation/next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.load(response)
    sleep_ms = event.get("sleep_ms") or int(event.get("headers", {{}}).get("x-sleep-ms", 0))
    time.sleep(sleep_ms / 1000)
    if "x-exit" in event.get("headers", {{}}):
        os._exit(1)
    if "requestContext" in event:
        answer = echo(event)
    else:
        answer = {{"pid": os.getpid(), "saw": wait_for(event["wait_for"]) if "wait_for" in event else None}}
    if "answer_bytes" in event:
        answer["padding"] = "x" * event["answer_bytes"]
    if "marker" in event:
        threading.Thread(target=write_later, args=(event["marker"],)).start()
    try:
        urllib.request.urlopen(urllib.request.Request(
            API + "/invocation/" + request_id + "/response", data=json.dumps(answer).encode(), method="POST"))
    except urllib.error.HTTPError as refused:  # an answer Lambda refuses (over 6 MB)
        print("response refused", refused.code, flush=True)
    time.sleep(event.get("linger_ms", 0) / 1000)
'''

FAILING_BOOTSTRAP = '''#!{python}
print("missing USERS_TABLE", flush=True)
raise SystemExit(3)
'''


class FleetTest(unittest.TestCase):
    def setUp(self):
        workdir = tempfile.TemporaryDirectory(prefix="faithful-test-")
        self.addCleanup(workdir.cleanup)
        self.dir = Path(workdir.name)
        self.bootstrap = self.write_script("bootstrap", FAKE_BOOTSTRAP)
        self.fleet = None

    def tearDown(self):
        if self.fleet:
            self.fleet.stop()

    def write_script(self, name, text):
        path = self.dir / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)
        return path

    def start(self, **config):
        function = FunctionConfig("fn", str(self.bootstrap), {"AWS_REGION": "eu-west-1"}, **config)
        self.fleet = Fleet([function], port=0, log_path=self.dir / "functions.log", api_function="fn").start()
        return self.fleet

    def invoke(self, event):
        """(instance, error header, JSON body) of one Invoke API call."""
        request = urllib.request.Request(f"{self.fleet.url}/2015-03-31/functions/fn/invocations",
                                         data=json.dumps(event).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return (response.headers["X-Faithful-Instance"], response.headers["X-Amz-Function-Error"],
                    json.load(response))

    def control(self, method, path, document=None):
        data = json.dumps(document).encode() if document is not None else None
        request = urllib.request.Request(f"{self.fleet.url}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stats(self):
        return self.control("GET", "/__fleet")["functions"]["fn"]

    def in_background(self, event):
        results = []
        thread = threading.Thread(target=lambda: results.append(self.invoke(event)))
        thread.start()
        return thread, results

    def wait_until(self, predicate, timeout=5):
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assertLess(time.monotonic(), deadline, "timed out waiting")
            time.sleep(0.02)

    def test_work_left_after_answering_waits_for_the_next_event(self):
        self.start(min_instances=1, max_instances=1)
        marker = self.dir / "marker"
        instance, error, _ = self.invoke({"marker": str(marker), "linger_ms": 300})
        self.assertIsNone(error)
        time.sleep(0.5)
        self.assertFalse(marker.exists(), "the frozen instance ran work after answering")
        second, _, answer = self.invoke({"wait_for": str(marker)})
        self.assertEqual(second, instance)
        self.assertTrue(answer["saw"], "the thawed instance did not finish its leftover work")

    def test_concurrent_events_cold_start_and_dispatch_is_least_recently_used(self):
        self.start(min_instances=1, max_instances=4)
        go_on = self.dir / "go-on"
        slow, slow_result = self.in_background({"wait_for": str(go_on)})
        self.wait_until(lambda: self.stats()["busy"] == 1)
        fast_instance, _, _ = self.invoke({})
        go_on.touch()
        slow.join()
        slow_instance = slow_result[0][0]
        self.assertNotEqual(fast_instance, slow_instance)
        self.assertEqual(self.stats()["cold_starts"], 2)
        # The fast one answered first, so it has waited longest: it is next.
        self.assertEqual(self.invoke({})[0], fast_instance)
        self.assertEqual(self.invoke({})[0], slow_instance)

    def test_killing_a_busy_instance_fails_its_caller_and_the_next_event_cold_starts(self):
        self.start(min_instances=1)
        busy, result = self.in_background({"sleep_ms": 3000})
        self.wait_until(lambda: self.stats()["busy"] == 1)
        killed = self.control("POST", "/__fleet/kill", {"function": "fn", "state": "busy", "count": 1})["killed"]
        busy.join()
        instance, error, body = result[0]
        self.assertEqual(killed, [instance])
        self.assertEqual(error, "Unhandled")
        self.assertEqual(body["errorType"], "Runtime.ExitError")
        self.assertIn("signal: killed", body["errorMessage"])
        next_instance, error, _ = self.invoke({})
        self.assertIsNone(error)
        self.assertNotEqual(next_instance, instance)
        stats = self.stats()
        self.assertEqual((stats["kills"], stats["cold_starts"], stats["alive"]), (1, 2, 1))

    def test_a_timeout_kills_the_instance(self):
        self.start(min_instances=1, timeout_s=0.5)
        instance, error, body = self.invoke({"sleep_ms": 3000})
        self.assertEqual(error, "Unhandled")
        self.assertEqual(body["errorType"], "Sandbox.Timedout")
        self.wait_until(lambda: self.stats()["alive"] == 0)
        with self.assertRaises(urllib.error.HTTPError) as gateway:
            urllib.request.urlopen(urllib.request.Request(
                f"{self.fleet.url}/slow", headers={"X-Sleep-Ms": "3000"}), timeout=10)
        self.assertEqual(gateway.exception.code, 503)
        self.assertEqual(json.load(gateway.exception), {"message": "Service Unavailable"})
        self.assertEqual(gateway.exception.headers["X-Faithful-Outcome"], "Sandbox.Timedout")
        self.assertEqual(gateway.exception.headers["X-Faithful-Death"], "timeout")
        stats = self.stats()
        self.assertEqual((stats["timeouts"], stats["alive"], stats["cold_starts"]), (2, 0, 2))

    def gateway_failure(self, headers):
        """(status, headers, JSON body) of an HTTP request whose invocation fails."""
        with self.assertRaises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(urllib.request.Request(f"{self.fleet.url}/x", headers=headers), timeout=10)
        return failure.exception.code, failure.exception.headers, json.load(failure.exception)

    def test_a_killed_or_crashed_instance_answers_api_gateways_500_and_says_which(self):
        self.start(min_instances=1)
        results = []
        busy = threading.Thread(target=lambda: results.append(self.gateway_failure({"X-Sleep-Ms": "3000"})))
        busy.start()
        self.wait_until(lambda: self.stats()["busy"] == 1)
        killed = self.control("POST", "/__fleet/kill", {"function": "fn", "state": "busy", "count": 1})["killed"]
        busy.join()
        status, headers, body = results[0]
        # API Gateway's status and body, as on AWS; what happened in headers AWS does not send.
        self.assertEqual((status, body), (500, {"message": "Internal Server Error"}))
        self.assertEqual([headers["X-Faithful-Instance"]], killed)
        self.assertEqual(headers["X-Faithful-Outcome"], "Runtime.ExitError")
        self.assertEqual(headers["X-Faithful-Death"], "killed")

        status, headers, body = self.gateway_failure({"X-Exit": "1"})
        self.assertEqual((status, body), (500, {"message": "Internal Server Error"}))
        self.assertEqual(headers["X-Faithful-Outcome"], "Runtime.ExitError")
        self.assertIsNone(headers["X-Faithful-Death"], "an instance that died by itself was not killed")
        self.assertEqual(self.stats()["crashes"], 1)

    def test_an_answer_over_six_megabytes_fails_as_lambda_fails_it(self):
        self.start(min_instances=1)
        instance, error, body = self.invoke({"answer_bytes": 6_300_000})
        self.assertEqual((error, body["errorType"]), ("Unhandled", "Function.ResponseSizeTooLarge"))
        # Just under the limit goes through, from the same instance (it was not killed).
        again, error, body = self.invoke({"answer_bytes": 6_000_000})
        self.assertEqual((again, error, len(body["padding"])), (instance, None, 6_000_000))

    def test_http_requests_become_api_gateway_events_and_back(self):
        self.start()
        request = urllib.request.Request(
            f"{self.fleet.url}/api/v1/users/x%20y?a=1&b=two%20words&a=2", data=b'{"hello": "world"}',
            method="PUT", headers={"X-Custom": "v", "Cookie": "c=1; d=2", "User-Agent": "faithful-test"})
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, event = response.status, response.headers, json.load(response)
        self.assertEqual(status, 201)
        self.assertEqual(headers["x-echo"], "yes")
        self.assertEqual(headers.get_all("x-multi"), ["1", "2"])
        self.assertEqual(headers["Set-Cookie"], "session=abc; Path=/")
        self.assertEqual(headers["X-Faithful-Instance"], "fn-1")
        self.assertEqual(int(headers["Content-Length"]), len(json.dumps(event)))
        self.assertEqual(event["version"], "2.0")
        self.assertEqual(event["rawPath"], "/api/v1/users/x%20y")
        self.assertEqual(event["rawQueryString"], "a=1&b=two%20words&a=2")
        self.assertEqual(event["queryStringParameters"], {"a": "1,2", "b": "two words"})
        self.assertEqual(event["headers"]["x-custom"], "v")
        self.assertNotIn("cookie", event["headers"])
        self.assertEqual(event["cookies"], ["c=1", "d=2"])
        self.assertEqual(event["requestContext"]["http"]["method"], "PUT")
        self.assertEqual(event["requestContext"]["http"]["userAgent"], "faithful-test")
        self.assertEqual(event["requestContext"]["stage"], "$default")
        self.assertEqual((event["body"], event["isBase64Encoded"]), ('{"hello": "world"}', False))

        binary = urllib.request.Request(f"{self.fleet.url}/upload", data=b"\xff\x00", method="POST")
        with urllib.request.urlopen(binary, timeout=10) as response:
            event = json.load(response)
        self.assertNotIn("queryStringParameters", event)
        self.assertEqual((base64.b64decode(event["body"]), event["isBase64Encoded"]), (b"\xff\x00", True))

    def test_the_front_holds_a_burst_of_connections_while_it_is_busy(self):
        # API Gateway holds every client's connection however busy its integration is. A
        # front that accepts slowly (its accept loop starved of CPU on a busy 2-core
        # machine) leans on the kernel's accept queue: with Python's default backlog of 5
        # the rest of a burst is dropped (connects time out, or reset). Here the accept loop
        # is stopped outright until every connection of the burst is established, or a
        # bound passes: the listen backlog alone has to hold them.
        burst = 64
        fleet = self.start(min_instances=1, max_instances=8)
        accepting, held = threading.Event(), threading.Event()
        process_request = fleet.server.process_request

        def busy_then_process(request, client_address):
            if not held.is_set():
                held.set()
                accepting.wait(10)
            process_request(request, client_address)

        fleet.server.process_request = busy_then_process
        sockets = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        try:
            for _ in range(burst):
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", fleet.port))
                sockets.append(client)
                selector.register(client, selectors.EVENT_WRITE)
            # Established = writable with no error; wait on progress, with a bound.
            established, deadline = set(), time.monotonic() + 3
            while len(established) < burst and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    selector.unregister(key.fileobj)
                    self.assertEqual(key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
                    established.add(key.fileobj)
            self.assertEqual(len(established), burst, "connections the front's listen backlog did not hold")
            self.assertTrue(held.wait(5), "the front never accepted")
        finally:
            accepting.set()
        # Now served, each its answer, none reset: a slow function (20 ms, 8 instances).
        for client in sockets:
            client.setblocking(True)
            client.settimeout(10)
            client.sendall(b"GET /slow HTTP/1.1\r\nHost: faithful\r\nX-Sleep-Ms: 20\r\nConnection: close\r\n\r\n")
        answers = []
        for client in sockets:
            with client.makefile("rb") as response:
                answers.append(response.readline().split(b" ")[1])
        self.assertEqual(answers, [b"201"] * burst)

    def test_start_reports_a_binary_that_fails_init(self):
        self.bootstrap = self.write_script("failing", FAILING_BOOTSTRAP)
        with self.assertRaises(FleetError) as failure:
            self.start(min_instances=1)
        self.assertIn("exit status 3", str(failure.exception))
        self.assertIn("missing USERS_TABLE", str(failure.exception))


if __name__ == "__main__":
    unittest.main()
