"""Where the local stack lives and what it is called: paths, ports, names, instance
counts and retry settings, most of them settable by a VF_ variable."""
import os
from pathlib import Path

# dev/stack/settings.py: three levels below the checkout.
ROOT = Path(__file__).resolve().parent.parent.parent
# The entry point every caller runs (make dev, make test, the tools); the stack
# runs its bridges through it too, and knows a live stack by it (supervisor.py).
ENTRY = ROOT / "dev" / "stack.py"
# VF_LOCAL_DIR lets a second stack (the clean-up test's) keep its files apart.
LOCAL = Path(os.environ.get("VF_LOCAL_DIR", ROOT / ".local"))
LOGS = LOCAL / "logs"
ENV_FILE = LOCAL / "stack.env"
# The running stack's pid and its children's process groups, to stop a stale stack.
PIDS_FILE = LOCAL / "stack.pids"
VENV_BIN = ROOT / ".venv" / "bin"

STACK_NAME = "vibefollow-local"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
EMULATOR_PORT = int(os.environ.get("VF_EMULATOR_PORT", "4566"))
API_PORT = int(os.environ.get("VF_API_PORT", "9000"))
# A proxy between the functions and moto refuses what DynamoDB would refuse and lets
# tests make chosen AWS operations fail (see FaultProxy).
FAULT_PROXY_PORT = int(os.environ.get("VF_FAULT_PROXY_PORT", "4567"))
EMULATOR_URL = f"http://127.0.0.1:{EMULATOR_PORT}"
API_URL = f"http://127.0.0.1:{API_PORT}"
# Lambda leaves a failed message invisible for the queue's visibility timeout (180 s on
# AWS); locally the bridge makes it visible again after this many seconds so retries
# and the trip to the DLQ take seconds, not minutes.
RETRY_DELAY_SECONDS = int(os.environ.get("VF_BRIDGE_RETRY_SECONDS", "1"))
# "faithful" (default): release binaries as Lambda runs them; "watch": cargo lambda watch.
RUNTIME = os.environ.get("VF_RUNTIME", "faithful")
# VF_RELEASE=1 makes `cargo lambda watch` build release binaries too.
RELEASE = RUNTIME == "faithful" or os.environ.get("VF_RELEASE") == "1"
# Instances per function under the faithful runtime (at least 4 api instances and 2
# consumers, so that retries and concurrent batches cross instances).
API_INSTANCES = (int(os.environ.get("VF_API_MIN", "4")), int(os.environ.get("VF_API_MAX", "24")))
CONSUMER_INSTANCES = (2, 4)
CHANGES_INSTANCES = (1, 2)
# The audiences function runs as many instances at once as its event sources ask, as
# on AWS: the template's MaximumConcurrency of each queue (64 time tasks, which sleep to
# their users' moments, 5 retries, 2 stream failures, the builds) beside the stream's
# readers, so that a stream batch never waits for an instance a time task holds.
AUDIENCES_INSTANCES = (1, 80)
# The webhooks function: its two queues' bridges (BRIDGE_POLLERS each) at once.
WEBHOOKS_INSTANCES = (1, 4)
# Concurrent SQS pollers of the bridge: Lambda's event source mapping polls with several.
BRIDGE_POLLERS = int(os.environ.get("VF_BRIDGE_POLLERS", "2"))
# The local queue every change event is delivered to (a rule on the change bus).
EVENT_SINK_QUEUE = f"{STACK_NAME}-events-sink"
# Stream records the changes function is retried on before they go to the failure
# queue (the template allows 5 on AWS; fewer keep tests of a poison record short).
STREAM_RETRIES = int(os.environ.get("VF_STREAM_RETRIES", "2"))
# A function with a Schedule event source is invoked this often (AWS: its rate, a
# minute for the audiences function), so that timers come due in seconds.
TICK_SECONDS = float(os.environ.get("VF_TICK_SECONDS", "5"))


def _scale(text):
    """VF_SCALE's factor: a number > 0, or the stack refuses to start."""
    try:
        scale = float(text)
    except ValueError:
        scale = 0.0
    if not 0 < scale < float("inf"):
        raise SystemExit(f"[stack] VF_SCALE must be a number > 0, not {text!r}")
    return scale


# VF_SCALE: AWS's per-key and per-service throughput limits times this factor (0.01:
# 10 write units a second per partition key), enforced by the proxy (throughput.py);
# unset, none are.
THROUGHPUT_SCALE = _scale(os.environ["VF_SCALE"]) if os.environ.get("VF_SCALE") else None
DEV_WORKSPACE = "dev"
DEV_SCOPES = "users:write,users:read,users:read_pii,users:delete,audiences:write,audiences:read,webhooks:write,webhooks:read"
