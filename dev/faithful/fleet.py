"""Instances of each function, dispatched as Lambda does, behind one HTTP front."""
import json
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import api_gateway
from .runtime_api import (EXIT_ERROR, INIT_ERROR, ExecutionEnvironment, Handler, InitError, Outcome,
                          QuietServer, Spawner)

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?(\?.*)?$")
KILLABLE_STATES = ("busy", "idle", "any")


@dataclass
class FunctionConfig:
    name: str
    binary: str
    env: dict = field(default_factory=dict)
    min_instances: int = 0
    max_instances: int = 4
    timeout_s: float = 30
    memory_mb: int = 128


class FrontServer(QuietServer):
    """The HTTP front: API Gateway holds every client connection however busy it is,
    where http.server listens with a backlog of 5 (request_queue_size), so a burst that
    arrives while its accept loop waits for the CPU (a busy 2-core machine) would be
    dropped past 5 connections: connects that time out, or are reset. Listening with the
    system's largest backlog (the kernel caps it at net.core.somaxconn, 4096 on Linux
    since 5.4, 128 before) holds the burst until the loop accepts it; one daemon thread
    per connection then serves it (QuietServer), so a slow function holds only its own."""
    request_queue_size = max(socket.SOMAXCONN, 128)


class FleetError(Exception):
    pass


class UnknownFunction(LookupError):
    pass


class Unavailable(Exception):
    """No instance can take the event: all stayed busy past the timeout, or the fleet stops."""


class FunctionPool:
    """The execution environments of one function; each serves one event at a time."""

    def __init__(self, config, log_path, spawner):
        self.config = config
        self.log_path = log_path
        self.spawner = spawner
        self.changed = threading.Condition()
        self.instances = []  # initialized and alive, in any state
        self.idle = []
        self.busy = set()
        self.held = set()  # answered, frozen, and out of the idle pool for a while
        self.starting = set()  # in their init phase
        self.numbered = 0
        self.stopping = False
        self.counts = dict.fromkeys(
            ("cold_starts", "init_errors", "invocations", "kills", "timeouts", "crashes"), 0)

    # --- dispatch --------------------------------------------------------------------

    def invoke(self, event, hold_s):
        try:
            instance = self.acquire()
        except InitError as e:
            return Outcome(e.instance, error_type=INIT_ERROR, error_message=str(e))
        outcome = instance.invoke(event)
        self.release(instance, outcome, hold_s)
        return outcome

    def acquire(self):
        """An idle instance, least recently used first; else a cold start if the function
        may grow; else the first to come free."""
        deadline = time.monotonic() + self.config.timeout_s
        with self.changed:
            while True:
                if self.stopping:
                    raise Unavailable("the fleet is stopping")
                self.drop_dead_idle()
                if self.idle:
                    instance = min(self.idle, key=lambda i: i.last_used)
                    self.idle.remove(instance)
                    self.mark_busy(instance)
                    return instance
                if len(self.instances) + len(self.starting) < self.config.max_instances:
                    instance = self.new_instance()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"all {self.config.max_instances} instances of {self.config.name} stayed busy")
                self.changed.wait(remaining)
        self.initialize(instance)
        with self.changed:
            self.mark_busy(instance)
        return instance

    def mark_busy(self, instance):
        self.busy.add(instance)
        self.counts["invocations"] += 1

    def drop_dead_idle(self):
        """Forgets idle instances that died while nobody looked (say, a `kill -9` from a shell)."""
        for instance in [i for i in self.idle if not i.alive]:
            self.idle.remove(instance)
            self.instances.remove(instance)
            if instance.death_reason is None:
                self.counts["crashes"] += 1

    def release(self, instance, outcome, hold_s):
        with self.changed:
            self.busy.discard(instance)
            instance.last_used = time.monotonic()
            if not instance.alive or outcome.timed_out:
                self.forget(instance, outcome)
            elif hold_s > 0:
                self.held.add(instance)
                timer = threading.Timer(hold_s, self.end_hold, [instance])
                timer.daemon = True
                timer.start()
            else:
                self.idle.append(instance)
            self.changed.notify_all()

    def forget(self, instance, outcome):
        if instance in self.instances:
            self.instances.remove(instance)
        if outcome.timed_out:
            self.counts["timeouts"] += 1
        elif outcome.error_type == EXIT_ERROR and instance.death_reason is None:
            self.counts["crashes"] += 1

    def end_hold(self, instance):
        with self.changed:
            if instance in self.held:
                self.held.remove(instance)
                self.idle.append(instance)
                self.changed.notify_all()

    # --- instances -------------------------------------------------------------------

    def new_instance(self):
        """A new environment, counted as starting (call with the lock held)."""
        self.numbered += 1
        self.counts["cold_starts"] += 1
        instance = ExecutionEnvironment(f"{self.config.name}-{self.numbered}", self.config,
                                        self.log_path, self.spawner)
        self.starting.add(instance)
        return instance

    def initialize(self, instance):
        """Starts the process and waits for its init (the cold start proper)."""
        try:
            instance.start()
            instance.wait_initialized()
        except InitError:
            with self.changed:
                self.starting.discard(instance)
                self.counts["init_errors"] += 1
                self.changed.notify_all()
            raise
        with self.changed:
            self.starting.discard(instance)
            instance.last_used = time.monotonic()
            self.instances.append(instance)
            if self.stopping:  # stop() came while this one was spawning
                instance.kill("stopped")

    def scale(self, count):
        """Cold-starts instances until `count` are alive (raising the maximum if needed)."""
        with self.changed:
            self.config.max_instances = max(self.config.max_instances, count)
            missing = max(count - len(self.instances) - len(self.starting), 0)
            new = [self.new_instance() for _ in range(missing)]
        with ThreadPoolExecutor(max_workers=max(missing, 1)) as pool:
            failures = [e for e in pool.map(self.start_idle, new) if e]
        if failures:
            raise FleetError(f"{len(failures)} of {missing} cold starts of {self.config.name} failed: {failures[0]}")

    def start_idle(self, instance):
        """Initializes an instance into the idle pool; the InitError if it fails."""
        try:
            self.initialize(instance)
        except InitError as e:
            return e
        self.release(instance, Outcome(instance.name), hold_s=0)
        return None

    def kill(self, state, count):
        """SIGKILLs up to `count` instances in `state` chosen at random; busy ones die mid
        invocation. Held instances count as idle: they wait, frozen, between events."""
        with self.changed:
            self.drop_dead_idle()
            candidates = {
                "busy": list(self.busy),
                "idle": self.idle + list(self.held),
                "any": list(self.instances),
            }[state]
            victims = random.sample(candidates, min(count, len(candidates)))
            for instance in victims:
                self.counts["kills"] += 1
                if instance not in self.busy:  # a busy one leaves through release()
                    self.remove_waiting(instance)
        for instance in victims:
            instance.kill("killed")
        return [instance.name for instance in victims]

    def remove_waiting(self, instance):
        if instance in self.idle:
            self.idle.remove(instance)
        self.held.discard(instance)
        self.instances.remove(instance)

    def stats(self):
        with self.changed:
            self.drop_dead_idle()
            return {
                "alive": len(self.instances),
                "idle": len(self.idle),
                "busy": len(self.busy),
                "held": len(self.held),
                "starting": len(self.starting),
                "max_instances": self.config.max_instances,
                "instances": sorted((i.name for i in self.instances), key=instance_number),
                **self.counts,
            }

    def stop(self):
        """SIGKILLs every instance, starting ones included; returns them to wait on."""
        with self.changed:
            self.stopping = True
            instances = self.instances + list(self.starting)
            self.changed.notify_all()
        for instance in instances:
            instance.kill("stopped")
        return instances


def instance_number(name):
    return int(name.rsplit("-", 1)[1])


class Fleet:
    """Functions run as on Lambda, behind an HTTP front on host:port."""

    def __init__(self, functions, host="127.0.0.1", port=9000, *, log_path, api_function="api"):
        self.functions = functions
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.api_function = api_function
        self.hold_ms = (0, 0)
        self.spawner = None
        self.pools = {}
        self.server = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.server = FrontServer((self.host, self.port), front_handler(self))
        except OSError as e:
            raise FleetError(f"cannot listen on {self.host}:{self.port}: {e}") from None
        self.port = self.server.server_address[1]
        self.spawner = Spawner()
        self.pools = {f.name: FunctionPool(f, self.log_path, self.spawner) for f in self.functions}
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         name="faithful-front", daemon=True).start()
        try:
            with ThreadPoolExecutor(max_workers=max(len(self.pools), 1)) as pool:
                list(pool.map(lambda p: p.scale(p.config.min_instances), self.pools.values()))
        except FleetError:
            self.stop()
            raise
        return self

    def stop(self):
        """SIGKILLs every instance at once; waits a few seconds at most."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        instances = [i for pool in self.pools.values() for i in pool.stop()]
        deadline = time.monotonic() + 5
        for instance in instances:
            instance.join(max(deadline - time.monotonic(), 0))
        if self.spawner:
            self.spawner.close()

    def invoke(self, function, event):
        """Runs one event (bytes) on `function`; returns its Outcome."""
        hold_s = random.uniform(*self.hold_ms) / 1000
        return self.pool(function).invoke(event, hold_s)

    def pool(self, function):
        if function not in self.pools:
            raise UnknownFunction(f"no function {function!r}")
        return self.pools[function]

    def stats(self):
        return {"functions": {name: pool.stats() for name, pool in self.pools.items()}, "hold": self.hold()}

    def kill(self, function, state="any", count=1):
        if state not in KILLABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(KILLABLE_STATES)}")
        return self.pool(function).kill(state, count)

    def scale(self, function, instances):
        self.pool(function).scale(instances)
        return self.pool(function).stats()

    def set_hold(self, min_ms, max_ms):
        """After each answer, keeps the instance frozen and out of the idle pool for a
        random time in [min_ms, max_ms]."""
        if not 0 <= min_ms <= max_ms:
            raise ValueError("need 0 <= min_ms <= max_ms")
        self.hold_ms = (min_ms, max_ms)
        return self.hold()

    def hold(self):
        return {"min_ms": self.hold_ms[0], "max_ms": self.hold_ms[1]}


# --- the HTTP front --------------------------------------------------------------------

def front_handler(fleet):
    class Front(Handler):
        def route(self):
            body = self.read_body()
            if self.path.startswith("/__fleet"):
                return self.control(body)
            invoke = INVOKE_PATH.match(self.path) if self.command == "POST" else None
            if invoke:
                return self.invoke_api(invoke.group(1), body)
            self.http_api(body)

        def __getattr__(self, name):
            # Every method (QUERY, TRACE, …) reaches the api, as API Gateway's catch-all
            # route sends it there; the api answers 405 with `Allow`.
            if name.startswith("do_"):
                return self.route
            raise AttributeError(name)

        # --- /__fleet ---------------------------------------------------------------

        def control(self, body):
            actions = {
                ("GET", "/__fleet"): lambda r: fleet.stats(),
                ("POST", "/__fleet/kill"): lambda r: {"killed": fleet.kill(
                    r["function"], r.get("state", "any"), int(r.get("count", 1)))},
                ("POST", "/__fleet/scale"): lambda r: fleet.scale(r["function"], int(r["instances"])),
                ("PUT", "/__fleet/hold"): lambda r: fleet.set_hold(int(r.get("min_ms", 0)), int(r.get("max_ms", 0))),
            }
            action = actions.get((self.command, self.path))
            if action is None:
                return self.answer_json(404, {"message": f"no {self.command} {self.path}"})
            try:
                result = action(json.loads(body or b"{}"))
            except UnknownFunction as e:
                return self.answer_json(404, {"message": str(e)})
            except KeyError as e:
                return self.answer_json(400, {"message": f"missing field {e}"})
            except (ValueError, TypeError) as e:
                return self.answer_json(400, {"message": str(e)})
            except FleetError as e:
                return self.answer_json(500, {"message": str(e)})
            self.answer_json(200, result)

        # --- the Lambda Invoke API --------------------------------------------------

        def invoke_api(self, function, event):
            try:
                outcome = fleet.invoke(function, event)
            except UnknownFunction:
                return self.answer_json(404, {"Type": "User", "message": f"Function not found: {function}"},
                                        [("x-amzn-ErrorType", "ResourceNotFoundException")])
            except Unavailable as e:
                return self.answer_json(429, {"Type": "User", "message": f"Rate Exceeded. {e}"},
                                        [("x-amzn-ErrorType", "TooManyRequestsException")])
            headers = [("Content-Type", "application/json"), ("X-Amz-Executed-Version", "$LATEST"),
                       ("X-Faithful-Instance", outcome.instance)]
            if outcome.ok:
                return self.answer(200, outcome.payload, headers)
            self.answer(200, outcome.error_body(), [*headers, ("X-Amz-Function-Error", "Unhandled")])

        # --- API Gateway HTTP API ---------------------------------------------------

        def http_api(self, body):
            event = api_gateway.request_event(self.command, self.path, self.headers.items(), body,
                                              self.client_address[0], fleet.port)
            request_id = event["requestContext"]["requestId"]
            try:
                outcome = fleet.invoke(fleet.api_function, json.dumps(event).encode())
            except (UnknownFunction, Unavailable):
                return self.gateway_error(api_gateway.INTERNAL_SERVER_ERROR, request_id)
            if not outcome.ok:
                failure = api_gateway.SERVICE_UNAVAILABLE if outcome.timed_out else api_gateway.INTERNAL_SERVER_ERROR
                return self.gateway_error(failure, request_id, outcome)
            try:
                status, headers, payload = api_gateway.http_response(outcome.payload)
            except api_gateway.MalformedResponse:
                return self.gateway_error(api_gateway.INTERNAL_SERVER_ERROR, request_id, outcome)
            self.answer(status, payload, [*headers, ("Apigw-Requestid", request_id),
                                          ("X-Faithful-Instance", outcome.instance)])

        def gateway_error(self, failure, request_id, outcome=None):
            """API Gateway's own status and body, as on AWS. Headers AWS does not send say
            what happened: the instance, Lambda's error type and, when the runtime
            SIGKILLed the instance mid-event, why (`killed`, `timeout`)."""
            status, document = failure
            headers = [("Apigw-Requestid", request_id)]
            if outcome:
                headers.append(("X-Faithful-Instance", outcome.instance))
                if outcome.error_type:
                    headers.append(("X-Faithful-Outcome", header_value(outcome.error_type)))
                if outcome.death:
                    headers.append(("X-Faithful-Death", outcome.death))
            self.answer_json(status, document, headers)

    return Front


def header_value(text):
    """A function's own error type, safe in a header: one line of ASCII."""
    return " ".join(text.split()).encode("ascii", "replace").decode()[:200]
