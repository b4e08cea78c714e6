"""One Lambda execution environment: a `bootstrap` process and its own Runtime API.

The environment is frozen (SIGSTOP) whenever Lambda would freeze it: the moment the
function's answer has arrived, and while it waits at `/next` with no event. It is
thawed (SIGCONT) only when it is handed the next event. Work the function leaves
running after it answers therefore waits for the next invocation, as on Lambda.
"""
import collections
import ctypes
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

API_VERSION = "2018-06-01"
ACCOUNT = "123456789012"
# Lambda gives the init phase 10 s to reach its first `/next`.
INIT_TIMEOUT_S = 10
# What the process sees besides the function's own variables: Lambda's environment is
# not the host's, so nothing of the shell that started the fleet leaks in.
BASE_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC"}
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved here: the forked child must not load anything

TIMEOUT_ERROR = "Sandbox.Timedout"
EXIT_ERROR = "Runtime.ExitError"
INIT_ERROR = "Runtime.InitError"
# Lambda refuses a synchronous invocation's response over 6 MB (6,291,556 bytes): the
# runtime's post gets a 413, and the invoker an error of this type (API Gateway: 500).
MAX_RESPONSE_BYTES = 6_291_556
RESPONSE_TOO_LARGE = "Function.ResponseSizeTooLarge"


class InitError(Exception):
    """The process died, reported an init error or hung before its first `/next`."""

    def __init__(self, instance, message):
        super().__init__(message)
        self.instance = instance


@dataclass
class Outcome:
    """How one invocation ended: the function's answer, or an error in Lambda's terms."""
    instance: str
    payload: bytes = b""
    error_type: str | None = None
    error_message: str = ""
    # Why the runtime SIGKILLed the instance during this event ("killed": a kill asked
    # for, "timeout", "stopped"); None when it did not (a process that exited by itself).
    death: str | None = None

    @property
    def ok(self):
        return self.error_type is None

    @property
    def timed_out(self):
        return self.error_type == TIMEOUT_ERROR

    def error_body(self):
        """The error as the Invoke API returns it: the runtime's own report if it made one."""
        if self.payload:
            return self.payload
        return json.dumps({"errorType": self.error_type, "errorMessage": self.error_message}).encode()


class QuietServer(ThreadingHTTPServer):
    """A peer that goes away mid-request (killed process, impatient client) is normal here."""
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body would wait for the
    # peer's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self.read_chunks()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def read_chunks(self):
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def answer_json(self, status, document, headers=()):
        self.answer(status, json.dumps(document).encode(), [("Content-Type", "application/json"), *headers])


class Spawner:
    """Starts every process from one long-lived thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process: a child forked from a request thread would be killed with that thread.
    """

    def __init__(self):
        self.requests = queue.Queue()
        threading.Thread(target=self.serve, name="faithful-spawner", daemon=True).start()

    def spawn(self, args, **popen_args):
        future = Future()
        self.requests.put((future, args, popen_args))
        return future.result()

    def close(self):
        self.requests.put(None)

    def serve(self):
        parent = os.getpid()
        for request in iter(self.requests.get, None):
            future, args, popen_args = request
            try:
                future.set_result(subprocess.Popen(
                    args, start_new_session=True, preexec_fn=lambda: die_with(parent), **popen_args))
            except Exception as e:
                future.set_exception(e)


def die_with(parent):
    """In the forked child: SIGKILL when the fleet dies, even if it already has."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Invocation:
    request_id: str
    event: bytes
    deadline_ms: int
    delivered: bool = False
    outcome: Outcome | None = None


class ExecutionEnvironment:
    """One process, serving one event at a time through its own Runtime API."""

    def __init__(self, name, function, log_path, spawner):
        self.name = name
        self.function = function
        self.log_path = Path(log_path)
        self.spawner = spawner
        self.changed = threading.Condition()
        self.initialized = False
        self.frozen = False
        self.dead = False
        self.death_reason = None  # why we killed it ("init", "timeout", "killed", "stopped"); None: it died by itself
        self.init_error = None
        self.current = None
        self.exit_status = None
        self.output_tail = collections.deque(maxlen=20)
        self.last_used = 0.0
        self.server = QuietServer(("127.0.0.1", 0), self.handler_class())
        self.process = None
        self.watcher = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"{self.name}-runtime-api", daemon=True).start()
        binary = Path(self.function.binary).resolve()
        try:
            with self.changed:  # a quick runtime calls /next before Popen has returned
                self.process = self.spawner.spawn(
                    [str(binary)], cwd=binary.parent, env=self.environment(binary.parent),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:
            self.dead = True
            self.server.shutdown()
            self.server.server_close()
            raise InitError(self.name, f"{self.name}: cannot start {binary}: {e}") from None
        threading.Thread(target=self.copy_output, name=f"{self.name}-output", daemon=True).start()
        self.watcher = threading.Thread(target=self.watch_exit, name=f"{self.name}-exit", daemon=True)
        self.watcher.start()

    def environment(self, task_root):
        function = self.function
        env = dict(BASE_ENVIRONMENT, **function.env)
        if "AWS_REGION" in env:
            env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_address[1]}",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()) + secrets.token_hex(16),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "_HANDLER": "bootstrap",
            "LAMBDA_TASK_ROOT": str(task_root),
        })
        return env

    def wait_initialized(self, timeout=INIT_TIMEOUT_S):
        """Returns once the process waits, frozen, at its first `/next`."""
        with self.changed:
            self.changed.wait_for(lambda: self.initialized or self.dead, timeout)
            if self.initialized:
                return
            if not self.dead:
                self.init_error = f"init did not reach /next within {timeout} s"
        self.kill("init")
        self.watcher.join(5)
        raise InitError(self.name, self.describe_init_failure())

    def describe_init_failure(self):
        reason = self.init_error or f"the process exited during init ({self.exit_description()})"
        output = "".join(self.output_tail).rstrip()
        return f"{self.name} ({self.function.binary}): {reason}" + (f"\nlast output:\n{output}" if output else "")

    def kill(self, reason):
        """SIGKILL, whatever the state: a frozen process dies too."""
        with self.changed:
            if self.dead or self.process is None:
                return
            self.death_reason = self.death_reason or reason
        # SIGKILL first: a SIGCONT first would let a frozen process run for a moment.
        for sig in (signal.SIGKILL, signal.SIGCONT):
            signal_group(self.process.pid, sig)

    def join(self, timeout):
        if self.watcher:
            self.watcher.join(timeout)

    @property
    def alive(self):
        return not self.dead

    def watch_exit(self):
        status = self.process.wait()
        with self.changed:
            self.dead = True
            self.exit_status = status
            invocation = self.current
            if invocation and invocation.outcome is None:
                invocation.outcome = self.exit_outcome(invocation.request_id)
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def exit_description(self):
        status = self.exit_status
        if status is not None and status < 0:
            return f"signal: {signal.strsignal(-status).lower()}"
        return f"exit status {status}"

    def exit_outcome(self, request_id):
        message = f"RequestId: {request_id} Error: Runtime exited with error: {self.exit_description()}"
        return Outcome(self.name, error_type=EXIT_ERROR, error_message=message, death=self.death_reason)

    def copy_output(self):
        """Appends the process's output to the shared log, one write per whole line, so
        that lines of concurrent processes never interleave."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with self.process.stdout as output:
            try:
                for line in output:
                    if not line.endswith(b"\n"):
                        line += b"\n"
                    os.write(fd, line)
                    self.output_tail.append(line.decode(errors="replace"))
            finally:
                os.close(fd)

    # --- freeze and thaw -------------------------------------------------------------

    def freeze(self):
        """SIGSTOP, and wait until every thread has actually stopped."""
        if not self.frozen:
            signal_group(self.process.pid, signal.SIGSTOP)
            wait_stopped(self.process.pid)
            self.frozen = True

    def thaw(self):
        if self.frozen:
            signal_group(self.process.pid, signal.SIGCONT)
            self.frozen = False

    # --- invocations -----------------------------------------------------------------

    def invoke(self, event):
        """Hands the event over and waits for the answer, a crash or the timeout."""
        timeout_s = self.function.timeout_s
        request_id = str(uuid.uuid4())
        invocation = Invocation(request_id, event, int((time.time() + timeout_s) * 1000))
        with self.changed:
            if self.dead:
                return self.exit_outcome(request_id)
            self.current = invocation
            self.thaw()
            self.changed.notify_all()
            answered = self.changed.wait_for(lambda: invocation.outcome is not None, timeout_s)
            if not answered:
                invocation.outcome = Outcome(self.name, error_type=TIMEOUT_ERROR,
                                             error_message=f"Task timed out after {timeout_s:.2f} seconds",
                                             death="timeout")
            self.current = None
        if not answered:
            self.kill("timeout")
        return invocation.outcome

    def next_event(self):
        """The `/next` long poll: the current event once there is one, else frozen."""
        with self.changed:
            while not self.dead and (self.current is None or self.current.delivered):
                if self.current is None:
                    self.freeze()
                if not self.initialized:
                    self.initialized = True
                    self.changed.notify_all()
                self.changed.wait()
            if self.dead:
                return None
            self.current.delivered = True
            return self.current

    def complete(self, request_id, outcome):
        """The function answered: frozen before anyone hears of it. False if the id is not
        the invocation in progress."""
        with self.changed:
            invocation = self.current
            if invocation is None or invocation.request_id != request_id or invocation.outcome:
                return False
            self.freeze()
            invocation.outcome = outcome
            self.changed.notify_all()
            return True

    def fail_init(self, report):
        with self.changed:
            self.init_error = f"{report.get('errorType', INIT_ERROR)}: {report.get('errorMessage', '')}"
        self.kill("init")

    # --- the Runtime API -------------------------------------------------------------

    def handler_class(self):
        environment = self
        prefix = f"/{API_VERSION}/runtime"

        class RuntimeApi(Handler):
            def do_GET(self):
                if self.path != f"{prefix}/invocation/next":
                    return self.answer_json(404, {"errorType": "NotFound", "errorMessage": self.path})
                invocation = environment.next_event()
                if invocation is None:
                    self.close_connection = True
                    return
                self.answer(200, invocation.event, [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", invocation.request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn", environment.function_arn()),
                    ("Lambda-Runtime-Trace-Id", trace_id()),
                ])

            def do_POST(self):
                body = self.read_body()
                if not self.path.startswith(f"{prefix}/"):
                    return self.answer_json(404, {"errorType": "NotFound", "errorMessage": self.path})
                parts = self.path[len(prefix):].strip("/").split("/")
                if parts == ["init", "error"]:
                    environment.fail_init(parse_error_report(body))
                    return self.answer_json(202, {"status": "OK"})
                if len(parts) != 3 or parts[0] != "invocation" or parts[2] not in ("response", "error"):
                    return self.answer_json(404, {"errorType": "NotFound", "errorMessage": self.path})
                request_id, kind = parts[1], parts[2]
                outcome = Outcome(environment.name, payload=body)
                if kind == "response" and len(body) > MAX_RESPONSE_BYTES:
                    message = (f"Response payload size ({len(body)} bytes) exceeded maximum allowed "
                               f"payload size ({MAX_RESPONSE_BYTES} bytes).")
                    environment.complete(request_id, Outcome(environment.name, error_type=RESPONSE_TOO_LARGE,
                                                             error_message=message))
                    return self.answer_json(413, {"errorType": "RequestEntityTooLarge", "errorMessage": message})
                if kind == "error":
                    report = parse_error_report(body)
                    error_type = report.get("errorType") or self.headers.get(
                        "Lambda-Runtime-Function-Error-Type", "Unhandled")
                    outcome = Outcome(environment.name, payload=body if "errorType" in report else b"",
                                      error_type=error_type, error_message=report.get("errorMessage", ""))
                if not environment.complete(request_id, outcome):
                    return self.answer_json(400, {"errorType": "InvalidRequestID",
                                                  "errorMessage": f"no invocation {request_id} in progress"})
                # The process is frozen: this 202 waits in the socket until the next event.
                self.answer_json(202, {"status": "OK"})

        return RuntimeApi

    def function_arn(self):
        region = self.function.env.get("AWS_REGION", "us-east-1")
        return f"arn:aws:lambda:{region}:{ACCOUNT}:function:{self.function.name}"


def parse_error_report(body):
    try:
        report = json.loads(body or b"{}")
    except ValueError:
        return {"errorMessage": body.decode(errors="replace")}
    return report if isinstance(report, dict) else {"errorMessage": str(report)}


def trace_id():
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"


def signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def wait_stopped(pid, timeout=1.0):
    """SIGSTOP is delivered asynchronously: wait until no thread of `pid` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all_threads_stopped(pid):
        time.sleep(0.0005)


def all_threads_stopped(pid):
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True
