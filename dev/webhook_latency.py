#!/usr/bin/env python3
"""Accepted upsert → webhook received, at a paced rate against a running local stack
(`make webhook-latency`, or `dev/stack.py run -- .venv/bin/python
dev/webhook_latency.py`). A listener on this machine is subscribed to `user.changed` of
a workspace of this run's own; each upsert creates its own user, and its delivery is
timed from the upsert's 202 to the listener's receipt, both on this machine's monotonic
clock. Every delivery is verified with Standard Webhooks' own Python library
(`standardwebhooks`, as a receiver would). Prints JSON; exit 1 if a delivery is missing
or refused.

    VF_WEBHOOK_BENCH_RATE (default 5 a second), VF_WEBHOOK_BENCH_SECONDS (default 60)"""
import json
import os
import sys
import threading
import time
import uuid

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # noqa: E402
from event_latency import quantile  # noqa: E402
from webhook_listener import call, listen, subscribe  # noqa: E402

RATE = int(os.environ.get("VF_WEBHOOK_BENCH_RATE", "5"))
SECONDS = int(os.environ.get("VF_WEBHOOK_BENCH_SECONDS", "60"))
# A new endpoint's workspace is marked for delivery within this (src/app/webhook_marks.rs).
MARKED_WITHIN_S = 5
# Deliveries still missing this long after the last upsert are counted missing.
DRAIN_S = 30


class Receipts:
    """What the listener received: per user, when (monotonic) and whether it verified."""

    def __init__(self, secret):
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.first = {}
        self.refused = 0
        self.repeats = 0

    def take(self, headers, body):
        received = time.monotonic()
        try:
            self.webhook.verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.refused += 1
            return
        user = json.loads(body)["data"]["external_user_id"]
        with self.lock:
            if user in self.first:
                self.repeats += 1
            else:
                self.first[user] = received


def summary(accepted_at, receipts):
    waited = [(receipts.first[user] - at) * 1000 for user, at in accepted_at.items() if user in receipts.first]
    return {
        "rate_per_s": RATE, "seconds": SECONDS, "accepted": len(accepted_at), "received": len(waited),
        "refused_signatures": receipts.refused, "repeats": receipts.repeats,
        "received_ms": {"p50": quantile(waited, 0.5), "p90": quantile(waited, 0.9), "p99": quantile(waited, 0.99),
                        "max": max(waited) if waited else None},
    }


def main():
    env = stack.read_env_file()
    api = env["VF_API_URL"]
    workspace = f"webhook-bench-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(workspace, "users:write,webhooks:write", 100000)
    box = [None]

    def answer(_path, headers, body):
        box[0].take(headers, body)
        return 204

    server = listen(answer)
    box[0] = Receipts(subscribe(api, key, server, "bench", ["user.changed"]))
    time.sleep(MARKED_WITHIN_S)
    accepted_at = {}
    started = time.monotonic()
    for i in range(RATE * SECONDS):
        time.sleep(max(0.0, started + i / RATE - time.monotonic()))
        user = f"w{i}"
        status, _ = call(api, key, "POST", "/api/v1/users", {"external_user_id": user, "traits": {"i": i}})
        if status == 202:
            accepted_at[user] = time.monotonic()
    deadline = time.monotonic() + DRAIN_S
    while len(box[0].first) < len(accepted_at) and time.monotonic() < deadline:
        time.sleep(0.1)
    server.shutdown()
    result = summary(accepted_at, box[0])
    print(json.dumps(result, indent=2))
    return 0 if result["received"] == result["accepted"] and not result["refused_signatures"] else 1


if __name__ == "__main__":
    sys.exit(main())
