"""The drill's chaos: AWS calls failed or stalled through the stack's fault proxy,
the SQS → consumer bridge and function instances killed, poison messages queued; and
the faithful runtime's control endpoint (holds, kills, counts)."""
import json
import random
import threading
import time
import urllib.request

from .settings import FAULTS_URL, FLEET_URL, PARKED_USER, SEED, WORKSPACE

DYNAMODB = "DynamoDB_20120810."
SQS = "AmazonSQS."
# (what, fault, seconds): the chaos thread cycles through these, two seconds apart.
FAULTS = [
    ("DynamoDB PutItem fails (500) for half the calls", {
        "operations": [DYNAMODB + "PutItem"], "status": 500, "code": "InternalServerError",
        "probability": 0.5}, 3),
    ("SQS SendMessage stalls 3.5 s (clients time out at 2.5 s)", {
        "operations": [SQS + "SendMessage"], "action": "stall", "delay_ms": 3500}, 4),
    ("SQS SendMessage fails (503)", {
        "operations": [SQS + "SendMessage"], "status": 503, "code": "ServiceUnavailable"}, 2),
    ("every DynamoDB call stalls 2 s", {
        "operations": [DYNAMODB + op for op in
                       ("PutItem", "GetItem", "BatchGetItem", "UpdateItem", "DeleteItem", "Query")],
        "action": "stall", "delay_ms": 2000}, 3),
    ("DynamoDB BatchGetItem and PutItem throttled for 70 % of the calls", {
        "operations": [DYNAMODB + "BatchGetItem", DYNAMODB + "PutItem"], "status": 400,
        "code": "ThrottlingException", "probability": 0.7}, 3),
]
# Beside every window, all load long: the parked user's membership reads fail, so the
# audiences function parks it (its state item's key, quoted: user-3, not user-30).
STANDING = [{"operations": [DYNAMODB + "GetItem"], "status": 400, "code": "ValidationException",
             "matching": f'u#{WORKSPACE}#{PARKED_USER}"'}]
POISON = ["this is not JSON", '{"version":9,"workspace_id":"drill-a"}', "[]",
          '{"version":1,"workspace_id":"drill-a","external_user_id":"u"}']


class Chaos(threading.Thread):
    """Faults, bridge kills and poison messages until told to stop."""

    def __init__(self, the_stack, sqs, queue_url):
        super().__init__(daemon=True)
        self.stack = the_stack
        self.sqs = sqs
        self.queue_url = queue_url
        self.stop = threading.Event()
        self.fault_windows = 0
        self.bridge_kills = 0
        self.function_kills = 0
        self.poisoned = 0
        self.last_fault_cleared = time.monotonic()

    def set_faults(self, faults):
        put_faults([*STANDING, faults])

    def clear_faults(self):
        """Ends a window: the standing fault stays until `release`."""
        put_faults(STANDING)
        self.last_fault_cleared = time.monotonic()

    @staticmethod
    def release():
        urllib.request.urlopen(urllib.request.Request(FAULTS_URL, method="DELETE"), timeout=5).read()

    def run(self):
        rng = random.Random(SEED)
        step = 0
        while not self.stop.wait(2):
            if step == 1:
                for body in POISON:
                    self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
                    self.poisoned += 1
            if step % 4 == 3:
                self.restart_functions(rng)
            elif step % 4 == 1:
                self.kill_bridge(rng)
            what, faults, seconds = FAULTS[step % len(FAULTS)]
            self.set_faults(faults)
            self.fault_windows += 1
            self.stop.wait(seconds)
            self.clear_faults()
            step += 1
        self.clear_faults()

    def kill_bridge(self, rng):
        # Mid-batch more often than not: the bridge is busy while clients are.
        time.sleep(rng.random())
        self.stack.kill_bridge()
        self.bridge_kills += 1
        time.sleep(1 + rng.random())
        self.stack.start_bridge(log_mode="a")

    def restart_functions(self, rng):
        """Instances die without warning, often mid-request: a busy api instance (its
        client loses the connection), a consumer instance (its batch is not deleted), a
        changes instance (its stream batch is delivered again: duplicate events), and an
        audiences instance, busy if one is (its commits may wait with their decisions
        pending: the retry carries them out)."""
        time.sleep(rng.random())
        for function, states in (("api", ("busy", "any")), ("consumer", ("any",)), ("changes", ("any",)),
                                 ("audiences", ("busy", "any"))):
            for state in states:
                killed = fleet("POST", "/kill", {"function": function, "state": state, "count": 1})
                self.function_kills += len(killed.get("killed", []))
                if killed.get("killed"):
                    break


def put_faults(faults):
    request = urllib.request.Request(FAULTS_URL, data=json.dumps(faults).encode(), method="PUT")
    urllib.request.urlopen(request, timeout=5).read()


def fleet(method, path="", body=None):
    """A call to the faithful runtime's control endpoint."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(FLEET_URL + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
