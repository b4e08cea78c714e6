"""The drill's load: clients that upsert and erase over shared users with
Idempotency-Keys and retries (after a timeout, 409, 429, 5xx), and probes that must be
refused. Every attempt is recorded by its kind (answers.py: a 5xx says who answered it)."""
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .answers import attempt_kind
from .settings import (CLIENT_TIMEOUT, DELETE_SHARE, ECHO_SHARE, GIVE_UP_AFTER, SEED, UPSERTS,
                       USERS_URL)


def post(key, body, idempotency_key=None, content_type="application/json", timeout=CLIENT_TIMEOUT,
         method="POST", path=""):
    """(status, headers, body) of one request (a POST unless told otherwise); status None
    when it timed out or failed to connect."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(USERS_URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except OSError:
        return None, {}, b""


def get(key, path):
    request = urllib.request.Request(f"{USERS_URL}{path}", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def upsert_body(rng, client, seq, user):
    """A body touching a random subset of fields; `traits.last` is shared by all."""
    traits = {f"c{client}": seq, "last": f"{client}-{seq}"}
    body = {"external_user_id": user, "traits": traits}
    if rng.random() < 0.3:
        traits["plan"] = None if rng.random() < 0.2 else rng.choice(["free", "pro", "team"])
    if rng.random() < 0.2:
        body["email"] = None if rng.random() < 0.2 else f"{user}.{client}.{seq}@drill.example"
    if rng.random() < 0.2:
        traits["color"] = None if rng.random() < 0.3 else rng.choice(["teal", "red", "blue"])
    if rng.random() < 0.1:
        traits["nested"] = {"seq": seq, "list": [client, seq, {"deep": True}]}
    return body


class Client(threading.Thread):
    def __init__(self, number, key, users):
        super().__init__(daemon=True)
        self.number = number
        self.key = key
        self.users = users
        self.rng = random.Random(SEED * 1000 + number)
        self.records = []

    def run(self):
        for seq in range(UPSERTS):
            user = self.rng.choice(self.users)
            if self.rng.random() < DELETE_SHARE:
                self.records.append(self.erase(user, str(uuid.uuid4())))
                continue
            body = upsert_body(self.rng, self.number, seq, user)
            self.records.append(self.send(body, str(uuid.uuid4())))

    def erase(self, user, idempotency_key):
        status, headers, attempts = post_until_answered(
            self.key, None, idempotency_key, self.rng, method="DELETE", path=f"/{urllib.parse.quote(user)}")
        return {"user": user, "body": None, "key": idempotency_key, "attempts": attempts,
                "status": status, "echo": None, "replayed": headers.get("Idempotent-Replayed") == "true"}

    def send(self, body, idempotency_key):
        status, headers, attempts = post_until_answered(self.key, body, idempotency_key, self.rng)
        echo = None
        if status == 202 and self.rng.random() < ECHO_SHARE:
            echo_status, echo_headers, echo_attempts = post_until_answered(
                self.key, body, idempotency_key, self.rng)
            echo = {"status": echo_status, "attempts": echo_attempts,
                    "replayed": echo_headers.get("Idempotent-Replayed") == "true"}
        return {"user": body["external_user_id"], "body": body, "key": idempotency_key,
                "attempts": attempts, "status": status, "echo": echo,
                "replayed": headers.get("Idempotent-Replayed") == "true"}


def post_until_answered(key, body, idempotency_key, rng, content_type="application/json",
                        timeout=CLIENT_TIMEOUT, **request):
    """Retries with the same key and body after a timeout, 409, 429 or 5xx, honouring
    Retry-After with jitter, as the SDK does. (status, headers, attempts); status None
    when it gave up; attempts: each one's kind (answers.attempt_kind)."""
    attempts = []
    started = time.monotonic()
    while time.monotonic() - started < GIVE_UP_AFTER:
        status, headers, answer = post(key, body, idempotency_key, content_type=content_type,
                                       timeout=timeout, **request)
        attempts.append(attempt_kind(status, headers, answer))
        if status is not None and status < 500 and status not in (409, 429):
            return status, headers, attempts
        retry_after = headers.get("Retry-After")
        time.sleep((float(retry_after) if retry_after else 0.5) * (0.5 + rng.random()))
    return None, {}, attempts


def probes(key, read_only_key):
    """Requests that must be refused; each carries a marker that must never be stored."""
    found = []

    rng = random.Random(SEED)

    def probe(expected, marker, body, use_key=key, content_type="application/json"):
        # Over the rate limit or during a fault the answer is 429/5xx first: retried.
        status, _, attempts = post_until_answered(use_key, body, str(uuid.uuid4()), rng,
                                                  content_type=content_type, timeout=30)
        found.append({"expected": expected, "status": status, "marker": marker, "attempts": attempts})

    for i in range(3):
        marker = f"probe_{uuid.uuid4().hex}"
        user = f"user-{i}"
        probe(422, marker, {"external_user_id": user, "email": "not-an-address", "traits": {marker: 1}})
        probe(401, marker, {"external_user_id": user, "traits": {marker: 1}},
              use_key="sk_test_" + uuid.uuid4().hex)
        probe(403, marker, {"external_user_id": user, "traits": {marker: 1}}, use_key=read_only_key)
        probe(415, marker, json.dumps({"external_user_id": user, "traits": {marker: 1}}).encode(),
              content_type="text/plain")
        probe(413, marker, {"external_user_id": user, "traits": {marker: "x" * 40_000}})
    return found
