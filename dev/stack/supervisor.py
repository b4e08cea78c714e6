"""The stack's processes: moto, the proxy, the functions (the faithful runtime or
`cargo lambda watch`) and their event sources (two queue bridges, the stream bridge,
the ticker), started in order, recorded in stack.pids, stopped together; a stale stack
of this checkout cleaned up; `up` and `run`."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from faithful import Fleet, FleetError, FunctionConfig, Spawner
from faithful.runtime_api import signal_group

from .bridges import batch_item_failures
from .output import log
from .proxy import FaultProxy
from .resources import create_resources
from .settings import (API_INSTANCES, API_PORT, API_URL, AUDIENCES_INSTANCES, BRIDGE_POLLERS, CHANGES_INSTANCES,
                       CONSUMER_INSTANCES, DEV_SCOPES, WEBHOOKS_INSTANCES, DEV_WORKSPACE, EMULATOR_PORT, EMULATOR_URL, ENTRY,
                       ENV_FILE, FAULT_PROXY_PORT, LOGS, PIDS_FILE, REGION, RELEASE, ROOT, RUNTIME,
                       STACK_NAME, THROUGHPUT_SCALE, TICK_SECONDS, VENV_BIN)
from .template import event_sources, function_environment, function_settings, load_template, queue_url

# Lambda's image keeps its CA certificates in one bundle; Debian's /etc/ssl/certs also
# holds a file per CA, which the functions' TLS set-up (rustls-native-certs) would read
# one by one at every cold start unless SSL_CERT_FILE names the bundle alone.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# The functions: local name (the binary's, and the Invoke API's), logical id in the
# template, (least, most) instances under the faithful runtime.
FUNCTIONS = (("api", "ApiFunction", API_INSTANCES),
             ("consumer", "ConsumerFunction", CONSUMER_INSTANCES),
             ("changes", "ChangesFunction", CHANGES_INSTANCES),
             ("audiences", "AudiencesFunction", AUDIENCES_INSTANCES),
             ("webhooks", "WebhooksFunction", WEBHOOKS_INSTANCES))


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"[stack] timed out after {timeout}s waiting for {what}")


def tool_env(extra=None):
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def failure_queue_variables(names):
    """The stack's failure and dead-letter queues, by the variables the tools and tests
    read them from (`vfctl --local dlq`, the drill): the ones the functions are not
    given (they only ever send to them through a redrive policy or a destination)."""
    return {
        "DLQ_URL": names["UpsertDeadLetterQueue"],
        "VF_CHANGES_FAILURE_QUEUE_URL": names["ChangesFailureQueue"],
        "VF_AUDIENCE_BUILD_DLQ_URL": names["AudienceBuildDeadLetterQueue"],
        "VF_AUDIENCE_PARKED_QUEUE_URL": names["AudienceParkedQueue"],
        "VF_AUDIENCE_STREAM_FAILURE_DLQ_URL": names["AudienceStreamFailureDeadLetterQueue"],
        "VF_AUDIENCE_TICK_DLQ_URL": names["AudienceTickDeadLetterQueue"],
        "VF_WEBHOOK_INTAKE_DLQ_URL": names["WebhookIntakeDeadLetterQueue"],
        "VF_WEBHOOK_WAKE_DLQ_URL": names["WebhookWakeDeadLetterQueue"],
    }


class Stack:
    def __init__(self, reload, log_level="TRACE", event_sink=False):
        # Tests and the drill run the functions at the most verbose level the template
        # allows, so that the log checks cover every line a deployment could write.
        self.reload = reload
        self.log_level = log_level
        # A queue that every change event reaches (make dev, the drill). Tests subscribe
        # with rules of their own instead: a sink nobody drains slows moto's EventBridge
        # down as it fills (its SendMessage recounts the queue).
        self.event_sink = event_sink
        self.spawner = Spawner()
        self.proxy = None
        self.fleet = None
        self.processes = []

    def spawn(self, name, args, env=None, log_to_terminal=False, log_mode="w"):
        """A child in a process group of its own that the kernel kills when the stack
        dies, however it dies (parent-death signal)."""
        log_file = open(LOGS / f"{name}.log", log_mode)
        process = self.spawner.spawn(
            args, cwd=ROOT, env=tool_env(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if log_to_terminal else log_file, stderr=subprocess.STDOUT,
            text=True,
        )
        if log_to_terminal:
            threading.Thread(target=tee, args=(process.stdout, log_file), daemon=True).start()
        self.processes.append((name, process))
        self.record_pids()
        return process

    def record_pids(self):
        PIDS_FILE.write_text(json.dumps({"stack": os.getpid(), "root": str(ROOT),
                                         "groups": [p.pid for _, p in self.processes]}))

    def start(self):
        LOGS.mkdir(parents=True, exist_ok=True)
        stop_stale_stack()
        if port_open(EMULATOR_PORT) or port_open(API_PORT):
            raise SystemExit(f"[stack] port {EMULATOR_PORT} or {API_PORT} is in use: is another stack running?")
        log(f"starting moto on {EMULATOR_URL}")
        self.spawn("moto", [str(VENV_BIN / "python"), str(Path(__file__).with_name("quiet_moto.py")),
                            "-H", "127.0.0.1", "-p", str(EMULATOR_PORT)])
        wait_for(lambda: port_open(EMULATOR_PORT), "moto", 30)
        self.template = load_template()
        names, schemas, indexes = create_resources(self.template, self.event_sink)
        self.names = names
        env = function_environment(self.template, names)
        self.proxy = FaultProxy(FAULT_PROXY_PORT, EMULATOR_URL, schemas, indexes, THROUGHPUT_SCALE)
        if THROUGHPUT_SCALE:
            log(f"AWS's throughput limits × {THROUGHPUT_SCALE} (VF_SCALE): GET "
                f"http://127.0.0.1:{FAULT_PROXY_PORT}/__throughput for the throttled calls and hot keys")
        env.update({
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{FAULT_PROXY_PORT}", "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "VF_RUNTIME": RUNTIME, "VF_USERS_STREAM_ARN": names["UsersTable.StreamArn"],
            **failure_queue_variables(names),
            # The ticker's interval (VF_TICK_SECONDS), not the template's minute.
            "AUDIENCE_TICK_SECONDS": str(max(1, round(TICK_SECONDS))),
            # A counter shard and a time task's pace are sized to a partition's write
            # units: scaled as they are.
            **({"RATE_LIMIT_SHARD_RATE": str(400 * THROUGHPUT_SCALE),
                "DUE_SETTLE_RATE": str(400 * THROUGHPUT_SCALE)} if THROUGHPUT_SCALE else {}),
            "AWS_LAMBDA_LOG_LEVEL": self.log_level,
            # Webhooks may point at a listener on this machine (http://127.0.0.1); the
            # template never sets it (src/config.rs).
            "WEBHOOK_ALLOW_LOCAL": "true",
            # Webhook retries and disabling compressed (make webhook-schedule); 1 unless
            # given.
            "WEBHOOK_TIME_FACTOR": os.environ.get("WEBHOOK_TIME_FACTOR", "1"),
        })
        if "EventSink" in names:
            env["VF_EVENT_SINK_URL"] = names["EventSink"]
        if CA_BUNDLE.exists():
            env["SSL_CERT_FILE"] = str(CA_BUNDLE)
        ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env = env
        if os.environ.get("VF_SKIP_BUILD") == "1":
            log("VF_SKIP_BUILD=1: running the functions as last built")
        else:
            log(f"building the functions{' (release)' if RELEASE else ''}; the first time takes a few minutes")
            subprocess.run(build_command(), cwd=ROOT, check=True)
        self.start_functions()
        self.bridge = None
        self.start_event_sources()
        log(f"API on {API_URL}/api/v1/users; logs in {LOGS}")

    def start_functions(self, log_mode="w"):
        if RUNTIME == "faithful":
            self.start_fleet()
        else:
            self.start_watch(log_mode)
        # The consumer starts on its first event (under watch: builds, after a change).
        batch_item_failures("consumer", {"Records": []}, [], "stack", timeout=600)

    def start_fleet(self):
        (LOGS / "functions.log").write_text("")
        self.fleet = Fleet(fleet_functions(self.template, self.env), port=API_PORT,
                           log_path=str(LOGS / "functions.log"))
        try:
            self.fleet.start()
        except FleetError as e:
            raise SystemExit(f"[stack] the functions did not start: {e}")

    def start_watch(self, log_mode):
        profile = ["--release"] if RELEASE else []
        watch = ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1",
                 "--invoke-port", str(API_PORT), "--env-file", str(ENV_FILE), *profile]
        if not self.reload:
            watch.append("--ignore-changes")
        self.functions = self.spawn("functions", watch, log_to_terminal=self.reload, log_mode=log_mode)
        wait_for(lambda: port_open(API_PORT), "cargo lambda watch", 120)
        wait_for(api_answers, "the api function", 300)

    def start_event_sources(self):
        """What invokes the functions besides the API, each a process of its own with a
        log of the same name: the queue bridges, the stream bridge, the ticker."""
        self.start_bridge()
        for function in ("audiences", "webhooks"):
            for source in event_sources(self.template, self.names, "SQS", function):
                self.start_queue_bridge(f"{function}-{source.event.lower()}-bridge", source)
        self.start_stream_bridge()
        self.start_ticker()

    def start_bridge(self, log_mode="w"):
        """The SQS → consumer bridge runs as its own process, so that the drill can kill
        it mid-batch as a crashed poller would die. VF_BRIDGE_VISIBILITY_SECONDS shortens
        its received messages' visibility, so that a killed bridge's batch comes back in
        seconds; the other bridges are never killed and keep their queue's visibility,
        which outlasts their function's longest batch as on AWS (a webhooks batch waits
        up to 15 s on an endpoint: a shorter one would hand its wakes to a second worker
        while the first still runs, which AWS does only by its rare duplicate delivery)."""
        [source] = event_sources(self.template, self.names, "SQS", "consumer")
        self.bridge = self.start_queue_bridge("bridge", source, log_mode,
                                              os.environ.get("VF_BRIDGE_VISIBILITY_SECONDS"))

    def start_queue_bridge(self, name, source, log_mode="w", visibility=None):
        """The bridge from an SQS event source of the template (its queue, batch size
        and ScalingConfig.MaximumConcurrency when a number, as the template says) to
        its function."""
        most = source.properties.get("ScalingConfig", {}).get("MaximumConcurrency")
        return self.spawn(name, [sys.executable, str(ENTRY), "bridge", queue_url(source.properties["Queue"]),
                                 source.function, str(source.properties.get("BatchSize", 10)),
                                 str(most if isinstance(most, int) else BRIDGE_POLLERS),
                                 *([visibility] if visibility else [])],
                          log_mode=log_mode)

    def start_stream_bridge(self, log_mode="w"):
        """One process reads the users stream for every function it is an event source
        of (changes, audiences), each to its own on-failure queue."""
        stream = self.env["VF_USERS_STREAM_ARN"]
        readers = [f"{s.function}={queue_url(s.properties['DestinationConfig']['OnFailure']['Destination'])}"
                   for s in event_sources(self.template, self.names, "DynamoDB") if s.properties["Stream"] == stream]
        self.spawn("stream-bridge", [sys.executable, str(ENTRY), "stream-bridge", stream, *readers],
                   log_mode=log_mode)

    def start_ticker(self, log_mode="w"):
        """EventBridge's schedules (audiences: rate(1 minute)), every VF_TICK_SECONDS, each
        with its dead-letter queue if the template gives it one."""
        schedules = [f"{s.function}={STACK_NAME}-{s.event.lower()}"
                     + (f",{queue_url(s.properties['DeadLetterConfig']['Arn'])}" if "DeadLetterConfig" in s.properties
                        else "")
                     for s in event_sources(self.template, self.names, "Schedule")]
        self.spawn("ticker", [sys.executable, str(ENTRY), "ticker", *schedules], log_mode=log_mode)

    def kill_bridge(self):
        self.kill("bridge", self.bridge)

    def kill(self, name, process):
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self.processes.remove((name, process))
        self.record_pids()

    def create_key(self, workspace=DEV_WORKSPACE, scopes=DEV_SCOPES, rate_limit=None):
        return create_key(workspace, scopes, rate_limit)

    def stop(self):
        """Everything stops within a few seconds: SIGTERM to every child at once, then
        SIGKILL to what is left after a shared grace period."""
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.fleet:
            self.fleet.stop()
        for _, process in self.processes:
            signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(process.pid, signal.SIGKILL)
        if self.proxy:
            self.proxy.close()
        self.spawner.close()
        ENV_FILE.unlink(missing_ok=True)
        PIDS_FILE.unlink(missing_ok=True)


STOP_GRACE_SECONDS = 3


def build_command():
    """The build of every function's binary (release under the faithful runtime)."""
    binaries = [arg for name, _, _ in FUNCTIONS for arg in ("--bin", name)]
    return ["cargo", "build", "--quiet", *binaries, *(["--release"] if RELEASE else [])]


def fleet_functions(template, env):
    """The functions as the faithful runtime runs them: release binaries, the same
    environment, the template's timeout and memory."""
    functions = []
    for name, logical, (least, most) in FUNCTIONS:
        timeout, memory = function_settings(template, logical)
        functions.append(FunctionConfig(name, str(ROOT / "target" / "release" / name), env,
                                        min_instances=least, max_instances=most,
                                        timeout_s=timeout, memory_mb=memory))
    return functions


def create_key(workspace=DEV_WORKSPACE, scopes=DEV_SCOPES, rate_limit=None):
    """A key of the running local stack, made with `vfctl --local`."""
    limit = ["--rate-limit", str(rate_limit)] if rate_limit else []
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--bin", "vfctl", "--", "--local", "keys", "create",
         "--workspace", workspace, "--scopes", scopes, *limit],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def stop_stale_stack():
    """A stack of this checkout whose `stack.py` died without cleaning up (SIGKILL)
    leaves its pids behind: its process groups are stopped, not refused."""
    if not PIDS_FILE.exists():
        return
    try:
        recorded = json.loads(PIDS_FILE.read_text())
    except ValueError:
        recorded = {}
    if pid_alive(recorded.get("stack")) and "stack.py" in cmdline(recorded["stack"]):
        raise SystemExit(f"[stack] another stack of this checkout is running (pid {recorded['stack']})")
    groups = [g for g in recorded.get("groups", []) if pid_alive(g)]
    if groups:
        log(f"stopping a stale stack of this checkout: process groups {groups}")
    for group in groups:
        signal_group(group, signal.SIGKILL)
    wait_for(lambda: not port_open(EMULATOR_PORT) and not port_open(API_PORT), "the stale stack's ports", 10)
    PIDS_FILE.unlink(missing_ok=True)


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid):
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def tee(stream, log_file):
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log_file.write(line)
        log_file.flush()


def api_answers():
    """True once the api function answers (401 without a key)."""
    try:
        urllib.request.urlopen(f"{API_URL}/api/v1/users/ping", timeout=60)
    except urllib.error.HTTPError as e:
        return e.code == 401
    except OSError:
        return False
    return False


# How to have webhooks delivered to a listener on this machine (the local stack allows
# http://127.0.0.1 targets; README "Webhooks").
WEBHOOK_HINT = f"""Webhooks to this machine: a listener that points endpoint 'mine' at itself and prints
each delivery it verifies (Standard Webhooks), one JSON object a line:

    VIBEFOLLOW_API_KEY=$VF_KEY cargo run -q --bin vfctl -- --local webhooks listen --register mine

or any HTTP server of yours on 127.0.0.1, say port 8787:

    curl -X PUT {API_URL}/api/v1/webhooks/mine -H "Authorization: Bearer $VF_KEY" \\
      -H 'content-type: application/json' \\
      -d '{{"url": "http://127.0.0.1:8787/hooks", "events": ["user.changed", "audience.entered"]}}'
"""


def up():
    stack = Stack(reload=True, log_level=os.environ.get("VF_LOG_LEVEL", "INFO"), event_sink=True)
    # Ctrl-C even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack.start()
        key = stack.create_key()
        print(f"\nVibeFollow Users is running at {API_URL}/api/v1/users", flush=True)
        print(f"Dev API key (workspace '{DEV_WORKSPACE}', all scopes):\n\n    export VF_KEY={key}\n", flush=True)
        print(WEBHOOK_HINT, flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while all(p.poll() is None for _, p in stack.processes):
            time.sleep(0.5)
        log("a process of the stack exited; stopping")
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def run(command):
    if ENV_FILE.exists() and port_open(API_PORT) and port_open(EMULATOR_PORT):
        env = read_env_file()
        if env.get("VF_RUNTIME") != "faithful":
            raise SystemExit("[stack] the running stack uses cargo lambda watch; the tests need "
                             "the Lambda-faithful runtime: stop it (or start it without VF_RUNTIME)")
        log("reusing the running stack")
        return subprocess.run(command, cwd=ROOT, env=tool_env(env)).returncode
    stack = Stack(reload=False)
    try:
        stack.start()
        return subprocess.run(command, cwd=ROOT, env=tool_env(test_env(stack.env))).returncode
    finally:
        stack.stop()


def test_env(env):
    """What the tests are told of the stack, beside the functions' own variables."""
    return dict(env, VF_API_URL=API_URL, VF_FUNCTION_LOG=str(LOGS / "functions.log"),
                VF_FAULT_PROXY_URL=f"http://127.0.0.1:{FAULT_PROXY_PORT}/__faults")


def read_env_file():
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return test_env({k: v for k, v in pairs})
