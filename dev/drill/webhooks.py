"""The drill's webhooks: three endpoints of the drill's workspace on this machine,
subscribed before the load (the stack runs with WEBHOOK_TIME_FACTOR, so the schedule's
minutes are seconds):

- `steady` answers 200, and takes `webhook.disabled` too;
- `flaky` refuses each message a few times by a script chosen by its id (503, 500, a
  429 with `Retry-After: 1`, and for the first two that draw it no answer within the
  service's 15 s), then answers 200: never more than 3 times in a row, so none is
  given up;
- `gone` answers 200 to its first deliveries, then 410: it must be disabled at once.

After recovery, independent of the Rust code, from what each listener received and
verified with `standardwebhooks` (the specification's library), against the bus events
the sink collected: every event of the workspace carries the webhooks mark and is
delivered to
`steady` and `flaky`, exactly once per `webhook-id` after dedup (repeats counted),
nothing else is; per (endpoint, user) the deliveries arrive in lane order (`sequence`
rising), and those that reached the service after a newer event of the user was sent
are counted (late, their version below one received: the contract's "arrives late");
every signature verifies; `gone` is disabled, nothing was
attempted on it after its `disabled_at`, and `steady` was told once."""
import json
import threading
import time
import zlib

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import stack
from webhook_listener import call, listen, subscribe

from .settings import DEADLINE, log

USER_EVENTS = {"User Changed": "user.changed", "User Deleted": "user.deleted",
               "Audience Entered": "audience.entered", "Audience Exited": "audience.exited"}
# The flaky endpoint's answers to a message's attempts, by its id's draw; then 200.
SCRIPTS = [[], [503], [429], [500, 503], ["timeout"], [503, 429, 500]]
# Timeouts cost a webhooks instance 15 s each: only this many messages draw one.
MOST_TIMEOUTS = 2
# Slower than the service waits for an answer (15 s).
TIMEOUT_S = 16
# `gone` answers 200 this many times, then 410.
GONE_AFTER = 5


class Endpoint:
    """One listener: what it received (each request: id, its body, the status answered,
    whether it verified), answering by `script(id, attempt)`."""

    def __init__(self, webhook_id, script):
        self.webhook_id, self.script = webhook_id, script
        self.received, self.lock = [], threading.Lock()
        self.attempts, self.verifier = {}, None
        self.server = listen(self.answer)

    def answer(self, _path, headers, body):
        message = headers.get("webhook-id", "")
        with self.lock:
            attempt = self.attempts.get(message, 0)
            self.attempts[message] = attempt + 1
            status = self.script(message, attempt)
        try:
            self.verifier.verify(body, headers)
            verified = True
        except (WebhookVerificationError, AttributeError):
            verified = False
        if status == "timeout":
            time.sleep(TIMEOUT_S)
        with self.lock:
            self.received.append({"id": message, "timestamp": int(headers.get("webhook-timestamp", "0")),
                                  "received_at": time.time(),
                                  "body": json.loads(body), "verified": verified,
                                  "status": None if status == "timeout" else status})
        if status == 429:
            return 429, {"Retry-After": "1"}
        return 200 if status == "timeout" else status

    def delivered(self):
        """Received and answered 2xx, in the order received."""
        with self.lock:
            return [r for r in self.received if r["status"] == 200]


class Webhooks:
    def __init__(self):
        timeouts = []

        def flaky(message, attempt):
            script = SCRIPTS[zlib.crc32(message.encode()) % len(SCRIPTS)]
            if "timeout" in script and message not in timeouts:
                if len(timeouts) >= MOST_TIMEOUTS:
                    script = [503]
                else:
                    timeouts.append(message)
            return script[attempt] if attempt < len(script) else 200

        self.gone_answered = 0

        def gone(_message, _attempt):
            self.gone_answered += 1
            return 200 if self.gone_answered <= GONE_AFTER else 410

        self.endpoints = {"steady": Endpoint("steady", lambda _m, _a: 200),
                          "flaky": Endpoint("flaky", flaky),
                          "gone": Endpoint("gone", gone)}

    def subscribe(self, key):
        """Subscribes the three, then waits out the instances' caches of the workspaces
        with webhooks and of their endpoints (5 s each), so that the load's events are
        all marked and fanned out."""
        every = sorted(USER_EVENTS.values())
        for webhook_id, endpoint in self.endpoints.items():
            events = every + ["webhook.disabled"] if webhook_id == "steady" else every
            secret = subscribe(stack.API_URL, key, endpoint.server, webhook_id, events)
            endpoint.verifier = Webhook(secret)
        time.sleep(6)

    def check(self, key, collector):
        """Waits until `steady` and `flaky` have every marked event of the workspace and
        `steady` has heard of `gone` (or the deadline passes); the checks and figures."""
        log("waiting for the workspace's events at the webhook endpoints")
        while True:
            # Read again each time: the collector goes on draining the sink.
            expected = expected_events(collector)
            done = all(expected.keys() <= {r["id"] for r in self.endpoints[name].delivered()}
                       for name in ("steady", "flaky"))
            if done and told_of_gone(self.endpoints["steady"]) or time.monotonic() > DEADLINE:
                break
            time.sleep(0.5)
        unmarked = sum(1 for e in collector.all_events() if not e["detail"].get("webhooks"))
        status, gone = call(stack.API_URL, key, "GET", "/api/v1/webhooks/gone", None)
        figures = {name: delivery_figures(endpoint, expected) for name, endpoint in self.endpoints.items()
                   if name != "gone"}
        after_disabled = attempts_after(self.endpoints["gone"], told_at(self.endpoints["steady"]))
        figures["gone"] = {"attempts": len(self.endpoints["gone"].received), "status": gone["data"].get("status"),
                           "disabled_reason": gone["data"].get("disabled_reason"),
                           "attempts_started_after_disabled": after_disabled}
        figures["events_expected"], figures["events_unmarked"] = len(expected), unmarked
        checks = {
            "webhooks: every event delivered to each endpoint, exactly once per webhook-id after dedup":
                unmarked == 0
                and all(f["missing"] == 0 and f["unexpected"] == 0 for f in (figures["steady"], figures["flaky"])),
            "webhooks: per (endpoint, user) in lane order (sequence rising), late arrivals counted":
                all(f["out_of_sequence"] == 0 for f in (figures["steady"], figures["flaky"])),
            "webhooks: every delivery verifies with standardwebhooks":
                all(r["verified"] for e in self.endpoints.values() for r in e.received),
            "webhooks: a 410 disables the endpoint, nothing attempted on it after, the others told once":
                status == 200 and figures["gone"]["status"] == "disabled" and after_disabled == 0
                and told_of_gone(self.endpoints["steady"]) == 1,
        }
        return figures, checks


def expected_events(collector):
    """By `webhook-id`, the workspace's events the endpoints take."""
    return {f"msg_{e['detail']['id']}": e for e in collector.all_events() if e["detail-type"] in USER_EVENTS}


def told_at(endpoint):
    """When (epoch seconds) the endpoint first took a `webhook.disabled` about `gone`:
    the disabling was stored before it was announced."""
    return min((r["received_at"] for r in endpoint.delivered()
                if r["body"]["type"] == "webhook.disabled" and r["body"]["data"]["webhook_id"] == "gone"),
               default=None)


def told_of_gone(endpoint):
    """How many distinct `webhook.disabled` about `gone` the endpoint took."""
    return len({r["id"] for r in endpoint.delivered()
                if r["body"]["type"] == "webhook.disabled" and r["body"]["data"]["webhook_id"] == "gone"})


def delivery_figures(endpoint, expected):
    """What one endpoint received against the expected events: missing, unexpected,
    repeats (the same id delivered again), attempts refused; per user, first receipts
    out of `sequence` order (the lane's order: a failure), and those whose version is
    below one already received: events that reached the service after a newer one of
    the user was sent (an audience move is evaluated after the change that caused it),
    delivered late as the contract says, their version telling so."""
    delivered = [r for r in endpoint.delivered() if r["body"]["type"] != "webhook.disabled"]
    ids = [r["id"] for r in delivered]
    first = {}
    for record in delivered:
        first.setdefault(record["id"], record)
    last_by_user, out_of_sequence, late = {}, 0, []
    for record in first.values():
        body, data = record["body"], record["body"]["data"]
        user = data["external_user_id"]
        place = (body["sequence"], data.get("version", data.get("user_version")), body["type"])
        previous = last_by_user.get(user)
        if previous and place[0] <= previous[0]:
            out_of_sequence += 1
        if previous and place[1] < previous[1]:
            late.append({"type": place[2], "version": place[1], "after": previous[2], "after_version": previous[1]})
        last_by_user[user] = place if not previous or place[1] >= previous[1] else (place[0], *previous[1:])
    return {"delivered": len(first), "missing": len(expected.keys() - first.keys()),
            "unexpected": len(first.keys() - expected.keys()), "repeats": len(ids) - len(first),
            "attempts": len(endpoint.received),
            "refused_or_timed_out": sum(1 for r in endpoint.received if r["status"] != 200),
            "out_of_sequence": out_of_sequence, "late": len(late), "late_examples": late[:5]}


def attempts_after(endpoint, told):
    """Attempts on the disabled endpoint that started (their `webhook-timestamp`, whole
    seconds) in a second after the others were told of its disabling, which comes after
    the disabling is stored: an attempt then is one the service should not have made."""
    if told is None:
        return 0
    return sum(1 for r in endpoint.received if r["timestamp"] > int(told))
