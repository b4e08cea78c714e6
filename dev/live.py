"""What the live measurers share (audience_latency.py, scale.py): calls to the local
stack's API, percentiles, `vfctl --local`, and a subscriber to a workspace's audience
events as a downstream view would have one (an EventBridge rule on the stack's bus into
an SQS queue, long-polled by a thread)."""
import functools
import json
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request

import boto3

import stack

AUDIENCE_SOURCE = "vibefollow.audiences"


def quantile(values, q):
    """The value at `q` (0..1) of `values` by rank (the nearest rank at or above), one
    decimal; None for no values."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def call(api, method, path, key, body=None, idempotency_key=None, timeout=10):
    """(status, parsed body) of one API call; (None, None) when it timed out or could not
    connect. Error bodies are parsed too (the error envelope)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(f"{api}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except OSError:
        return None, None


def retried(status):
    """Whether an answer is worth sending again (with the same Idempotency-Key): no
    answer, 409 (the key in flight), 429 and 5xx."""
    return status is None or status in (409, 429) or status >= 500


def vfctl_command():
    """How to run vfctl: `VF_VFCTL` (a built binary, or any command line) if set,
    otherwise `cargo run -q --bin vfctl --` as the README does."""
    given = os.environ.get("VF_VFCTL")
    return shlex.split(given) if given else ["cargo", "run", "-q", "--bin", "vfctl", "--"]


@functools.cache
def built_vfctl():
    """Builds vfctl once, without the bound of a call: on a fresh machine the first
    build takes minutes, which is not a slow `vfctl` call."""
    if not os.environ.get("VF_VFCTL"):
        subprocess.run(["cargo", "build", "-q", "--bin", "vfctl"], cwd=stack.ROOT, check=True)


def vfctl(*args, timeout=120):
    """`vfctl --local ARGS…` against the running local stack: its stdout, stripped.
    Raises on a failed run."""
    built_vfctl()
    out = subprocess.run([*vfctl_command(), "--local", *args], cwd=stack.ROOT, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"vfctl {' '.join(args)} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def create_key(workspace, scopes, rate_limit=None):
    """A key of the running local stack (`vfctl --local keys create`)."""
    limit = ["--rate-limit", str(rate_limit)] if rate_limit else []
    return vfctl("keys", "create", "--workspace", workspace, "--scopes", scopes, *limit)


class Subscriber(threading.Thread):
    """One workspace's audience events (or several workspaces', `workspace` a list) as
    a subscriber's queue receives them: every event with the moment it arrived
    (monotonic and wall clock), and the first arrival of each (detail-type, workspace,
    audience, user). Start it before the workspaces have users."""

    def __init__(self, env, workspace, prefix="latency", endpoint=None, name=None):
        super().__init__(daemon=True)
        session = boto3.session.Session(region_name=env["AWS_REGION"], aws_access_key_id="test",
                                        aws_secret_access_key="test")
        endpoint = endpoint or env["AWS_ENDPOINT_URL"]
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        events = session.client("events", endpoint_url=endpoint)
        workspaces = [workspace] if isinstance(workspace, str) else list(workspace)
        name = f"{prefix}-{name or workspaces[0]}"[:64]
        self.workspace = workspaces[0]
        self.url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bus = env["EVENT_BUS_NAME"]
        events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(
            {"source": [AUDIENCE_SOURCE], "detail": {"workspace_id": workspaces}}))
        events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        self.events = []  # (arrived monotonic, arrived wall-clock s, envelope)
        self.first = {}  # (detail-type, workspace, audience id, user) -> arrived monotonic
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = 0

    def run(self):
        while not self.stop.is_set():
            try:
                got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", [])
            except Exception:  # the emulator is stopping, or busy past the client's timeout
                self.errors += 1
                time.sleep(0.5)
                continue
            now, wall = time.monotonic(), time.time()
            with self.lock:
                for message in got:
                    event = json.loads(message["Body"])
                    detail = event["detail"]
                    self.events.append((now, wall, event))
                    self.first.setdefault((event["detail-type"], detail["workspace_id"], detail["audience_id"],
                                           detail["external_user_id"]), now)
            if got:
                try:
                    stack.delete_messages(self.sqs, self.url, got)
                except Exception:  # a message not deleted comes again: events are de-duplicated by id
                    self.errors += 1

    def arrivals(self, detail_type, audience_id, workspace=None):
        """{user: first arrival (monotonic)} of the events of that type and audience (of
        the first workspace unless told)."""
        workspace = workspace or self.workspace
        with self.lock:
            return {user: at for (kind, w, audience, user), at in self.first.items()
                    if kind == detail_type and audience == audience_id and w == workspace}

    def arrival(self, detail_type, workspace, audience_id, user):
        """The first arrival (monotonic) of one event, or None."""
        with self.lock:
            return self.first.get((detail_type, workspace, audience_id, user))

    def received(self, workspace=None):
        """Every event so far (of `workspace` if told), as (arrived monotonic, arrived
        wall-clock s, envelope)."""
        with self.lock:
            return [e for e in self.events if workspace is None or e[2]["detail"]["workspace_id"] == workspace]
