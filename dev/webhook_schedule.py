#!/usr/bin/env python3
"""The webhook retry schedule and a 5-day disabling, measured on the local stack with its
time compressed (`make webhook-schedule`: the stack runs with WEBHOOK_TIME_FACTOR, by
default 3,600, so 10 h is 10 s and 5 days 2 minutes). One endpoint always answers 500;
another takes `webhook.disabled`. One user's change is attempted until the schedule gives
it up: each wait between its attempts is set beside the schedule's step ÷ the factor
(SQS delays are whole seconds rounded up, ×0.8–1.2 jitter). Fresh users' changes keep the
endpoint failing until it is disabled: the time from its first failure to the
`webhook.disabled` the other endpoint receives is set beside 5 days ÷ the factor, and no
attempt may reach the failing endpoint after that. Every request is verified with
Standard Webhooks' own Python library. Prints JSON; exit 1 if a check fails."""
import json
import math
import os
import sys
import threading
import time
import uuid

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # noqa: E402
from webhook_listener import call, listen, subscribe  # noqa: E402

# The specification's schedule (src/domain/webhook.rs RETRY_WAITS), in seconds, and the
# failing allowance (FAILING_DISABLES_AFTER).
RETRY_WAITS_S = [5, 300, 1800, 7200, 18000, 36000, 36000]
FAILING_DISABLES_AFTER_S = 5 * 24 * 3600
JITTER = (0.8, 1.2)
# A new endpoint's workspace is marked for delivery within this (src/app/webhook_marks.rs).
MARKED_WITHIN_S = 5
# A fresh user's change this often keeps the endpoint failing.
PACE_S = 5
# What a wake adds to its delay on the local stack (queue bridge, invocation, lane read):
# measured well under a second; a wait is judged within this of its bounds.
SLACK_S = 2.0


class Requests:
    """Every request received, by path: (monotonic time, webhook-id, body)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_path = {"/flaky": [], "/ops": []}
        self.secrets = {}
        self.refused = 0

    def take(self, path, headers, body):
        received = time.monotonic()
        try:
            Webhook(self.secrets[path]).verify(body, headers)
        except (KeyError, WebhookVerificationError):
            with self.lock:
                self.refused += 1
            return 500
        with self.lock:
            self.by_path[path].append((received, headers["webhook-id"], json.loads(body)))
        return 500 if path == "/flaky" else 204

    def disabled(self):
        with self.lock:
            return next((r for r in self.by_path["/ops"] if r[2]["type"] == "webhook.disabled"), None)


def expected_wait_s(step, factor):
    """The bounds (s) of the wait after failure `step` (0-based) at `factor`: the
    schedule's step ÷ the factor, jittered, then SQS's whole seconds rounded up."""
    low, high = (RETRY_WAITS_S[step] / factor * j for j in JITTER)
    return max(1, math.ceil(low)), max(1, math.ceil(high))


def summary(requests, first_message, factor):
    """The measured schedule and disabling, and whether each is as specified."""
    attempts = [t for t, message, _ in requests.by_path["/flaky"] if message == first_message]
    waits = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
    steps = []
    for step, wait in enumerate(waits):
        low, high = expected_wait_s(step, factor) if step < len(RETRY_WAITS_S) else (None, None)
        within = low is not None and low - SLACK_S / 2 <= wait <= high + SLACK_S
        steps.append({"after_failure": step + 1, "scheduled_s": RETRY_WAITS_S[step] if low else None,
                      "expected_s": [low, high], "measured_s": wait, "ok": within})
    failures = [t for t, _, _ in requests.by_path["/flaky"]]
    disabled = requests.disabled()
    result = {
        "time_factor": factor, "attempts_of_one_message": len(attempts), "schedule": steps,
        "refused_signatures": requests.refused,
    }
    if disabled and failures:
        after_s = disabled[0] - failures[0]
        allowance_s = FAILING_DISABLES_AFTER_S / factor
        late = [t for t in failures if t > disabled[0] + SLACK_S]
        result["disabled"] = {
            "reason": disabled[2]["data"]["reason"], "after_first_failure_s": round(after_s, 1),
            "allowance_s": allowance_s, "attempts_after_it": len(late),
            # Disabled by the first failure past the allowance: within a pace of it.
            "ok": (disabled[2]["data"]["reason"] == "failing" and allowance_s <= after_s
                   <= allowance_s + PACE_S + SLACK_S and not late),
        }
    result["ok"] = (len(attempts) == len(RETRY_WAITS_S) + 1 and all(s["ok"] for s in steps)
                    and not requests.refused and result.get("disabled", {}).get("ok", False))
    return result


def main():
    env = stack.read_env_file()
    factor = float(env.get("WEBHOOK_TIME_FACTOR", "1"))
    if factor < 600:
        raise SystemExit("run under WEBHOOK_TIME_FACTOR ≥ 600 (make webhook-schedule): the schedule takes days")
    api = env["VF_API_URL"]
    workspace = f"webhook-schedule-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(workspace, "users:write,webhooks:write", 100000)
    requests = Requests()
    server = listen(requests.take)
    requests.secrets["/flaky"] = subscribe(api, key, server, "flaky", ["user.changed"], "/flaky")
    requests.secrets["/ops"] = subscribe(api, key, server, "ops", ["webhook.disabled"], "/ops")
    time.sleep(MARKED_WITHIN_S)
    schedule_s = sum(RETRY_WAITS_S) / factor * JITTER[1] + len(RETRY_WAITS_S) * SLACK_S
    deadline = time.monotonic() + max(schedule_s, FAILING_DISABLES_AFTER_S / factor) + 60
    n = 0
    while requests.disabled() is None and time.monotonic() < deadline:
        call(api, key, "POST", "/api/v1/users", {"external_user_id": f"s{n}", "traits": {"n": n}})
        n += 1
        time.sleep(PACE_S)
    # The first message's schedule outlasts the disabling when the factor makes 5 days
    # shorter than the schedule; it is then given up at the disabling.
    first_message = requests.by_path["/flaky"][0][1] if requests.by_path["/flaky"] else None
    time.sleep(SLACK_S)
    server.shutdown()
    result = summary(requests, first_message, factor)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
