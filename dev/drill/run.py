"""The drill as a whole (`make drill`): a stack with an event sink, the load with chaos,
then the checks and the report. Exit status 1 when a check fails."""
import json
import os
import time

import stack

from . import audiences, webhooks
from .chaos import Chaos, fleet
from .load import Client, probes
from .oracle import EventCollector, verify
from .report import write_report
from .settings import (CLIENTS, DEADLINE, HOLD_MS, OTHER_WORKSPACE, RATE_LIMIT, REPORT, UPSERTS, USERS,
                       WORKSPACE, log)


def drill(the_stack):
    session = stack.emulator_session()
    aws = {"dynamodb": session.client("dynamodb", endpoint_url=stack.EMULATOR_URL),
           "sqs": session.client("sqs", endpoint_url=stack.EMULATOR_URL)}
    keys = {"write": the_stack.create_key(WORKSPACE, stack.DEV_SCOPES, RATE_LIMIT),
            "read_only": the_stack.create_key(WORKSPACE, "users:read"),
            "other_workspace": the_stack.create_key(OTHER_WORKSPACE, stack.DEV_SCOPES),
            "audiences": the_stack.create_key(WORKSPACE, "audiences:write,audiences:read"),
            "webhooks": the_stack.create_key(WORKSPACE, "webhooks:write,webhooks:read")}
    audiences.define(keys["audiences"])
    endpoints = webhooks.Webhooks()
    endpoints.subscribe(keys["webhooks"])
    load = run_load(the_stack, aws, keys)
    load["webhooks"] = endpoints
    load["parked"] = audiences.redrive_parked(the_stack, aws["sqs"], load["chaos"])
    return verify(the_stack.env, aws, keys, load)


def run_load(the_stack, aws, keys):
    """Clients, probes and chaos together, until every client is done."""
    users = [f"user-{i}" for i in range(USERS)]
    chaos = Chaos(the_stack, aws["sqs"], the_stack.env["UPSERT_QUEUE_URL"])
    collector = EventCollector(aws["sqs"], the_stack.env["VF_EVENT_SINK_URL"])
    collector.start()
    clients = [Client(i, keys["write"], users) for i in range(CLIENTS)]
    log(f"{CLIENTS} clients x {UPSERTS} upserts over {USERS} users, with faults")
    fleet("PUT", "/hold", {"min_ms": HOLD_MS[0], "max_ms": HOLD_MS[1]})
    started = time.monotonic()
    chaos.start()
    for client in clients:
        client.start()
    probe_results = probes(keys["write"], keys["read_only"])
    for client in clients:
        client.join(max(1, DEADLINE - time.monotonic()))
    seconds = time.monotonic() - started
    chaos.stop.set()
    chaos.join()
    fleet("PUT", "/hold", {"min_ms": 0, "max_ms": 0})
    if any(c.is_alive() for c in clients):
        raise SystemExit("[drill] clients did not finish before the deadline")
    if the_stack.bridge.poll() is not None:
        the_stack.start_bridge(log_mode="a")
    return {"records": [r for c in clients for r in c.records], "probes": probe_results,
            "chaos": chaos, "collector": collector, "seconds": seconds}


def main():
    os.environ.setdefault("VF_BRIDGE_RETRY_SECONDS", "3")
    os.environ.setdefault("VF_BRIDGE_VISIBILITY_SECONDS", "4")
    # The webhook schedule's minutes in seconds: the flaky endpoint's retries within the
    # drill (5 days failing would be 2 minutes: the flaky one never fails that long).
    os.environ.setdefault("WEBHOOK_TIME_FACTOR", "3600")
    the_stack = stack.Stack(reload=False, event_sink=True)
    try:
        the_stack.start()
        summary = drill(the_stack)
    finally:
        the_stack.stop()
    write_report(summary)
    print(json.dumps(summary, indent=2))
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    log(f"all checks passed; report in {REPORT.relative_to(stack.ROOT)}")
    return 0
