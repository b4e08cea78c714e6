#!/usr/bin/env python3
"""DynamoDB capacity units per keyed upsert, counted by the local stack's proxy.

    capacity_run.py        (inside a running stack: `dev/stack.py run -- …`)

Three workloads, each through the whole stack (api → SQS → consumer), counted from
`PUT /__capacity` until every upsert is applied (checked against moto directly, so the
checks are not counted):

- `new`: keyed upserts that create users with a ~1.5 KB profile;
- `update`: keyed upserts that change one trait of those users;
- `full profile`: keyed upserts that change one trait of a user whose custom traits
  fill the 256 KiB budget;
- `batch`: BATCH_USERS existing users (the `update` workload's and more) changed in one
  keyed call of `POST /api/v1/users/batch` (units per user).

Prints `{workload: {"upserts": n, "item_bytes": …, "tables": {table: {"write", "read",
"indexes"}}}}` as JSON; `make bench` divides by the upserts.
"""
import json
import os
import random
import string
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402
from boto3.dynamodb.types import TypeDeserializer  # noqa: E402
from dynamodb_limits import item_size  # noqa: E402
# Users in the `batch` workload's one call, as `make bench` probes the route's CPU.
from invocation_probe import BATCH_USERS  # noqa: E402
from stack.users_item import as_format_1  # noqa: E402

PROXY = f"http://127.0.0.1:{stack.FAULT_PROXY_PORT}/__capacity"
UPSERTS = 40
WORKSPACE = "ws_capacity"
DESERIALIZE = TypeDeserializer().deserialize


def call(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def typical_traits(n, rev):
    """About 1.5 KB of profile: the known traits and a handful of custom ones."""
    return {"name": f"Capacity User {n}", "plan": "pro", "company": "Example Inc", "role": "admin",
            "signupDate": "2026-05-17T14:00:00Z", "rev": rev,
            "preferences": {"theme": "dark", "digest": "weekly", "locale": "en-GB", "timezone": "Europe/London"},
            "utm": {"source": "newsletter", "medium": "email", "campaign": f"autumn-{n}"},
            "notes": "x" * 900}


def upsert_body(user, traits):
    return {"external_user_id": user, "email": f"{user}@example.com", "traits": traits}


class Run:
    def __init__(self, key):
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.moto = stack.emulator_session().client("dynamodb", endpoint_url=stack.EMULATOR_URL)
        self.users_table = os.environ["USERS_TABLE"]

    def upsert(self, user, traits):
        """One keyed upsert; traits carry `rev`, the version `wait_applied` looks for."""
        self.post("/api/v1/users", upsert_body(user, traits))

    def upsert_batch(self, upserts):
        """The (user, traits) of `upserts` in one keyed batch call."""
        self.post("/api/v1/users/batch", {"users": [upsert_body(user, traits) for user, traits in upserts]})

    def post(self, path, body):
        status, answer = call("POST", f"{stack.API_URL}{path}", body,
                              dict(self.headers, **{"Idempotency-Key": str(uuid.uuid4())}))
        assert status == 202, answer

    def stored(self, user):
        key = {"pk": {"S": f"{WORKSPACE}#{user}"}}
        return self.moto.get_item(TableName=self.users_table, Key=key, ConsistentRead=True).get("Item")

    def wait_applied(self, user, version):
        """The stored item once the upsert whose `rev` is `version` has been applied."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            item = self.stored(user)
            plain = item and as_format_1({k: DESERIALIZE(v) for k, v in item.items()})
            if plain and plain.get("traits", {}).get("rev") == version:
                return item
            time.sleep(0.1)
        raise SystemExit(f"capacity_run: {user} v{version} never applied")

    def counted(self, upserts, batch=False):
        """Counts the units of `upserts` (a list of (user, traits, rev)), sent one by
        one or in one batch call, until applied."""
        call("PUT", PROXY, {})
        try:
            if batch:
                self.upsert_batch([(user, traits) for user, traits, _ in upserts])
            else:
                for user, traits, _ in upserts:
                    self.upsert(user, traits)
            last = {user: rev for user, _, rev in upserts}
            items = [self.wait_applied(user, rev) for user, rev in last.items()]
            status, tables = call("GET", PROXY)
        finally:
            call("DELETE", PROXY)
        return {"upserts": len(upserts), "item_bytes": max(item_size(item) for item in items),
                "tables": json.loads(tables)}


def main():
    run = Run(stack.create_key(WORKSPACE, "users:write,users:read", rate_limit=100000))
    prefix = uuid.uuid4().hex[:6]
    users = [f"cap_{prefix}_{n}" for n in range(UPSERTS)]
    result = {"new": run.counted([(u, typical_traits(n, 1), 1) for n, u in enumerate(users)])}
    result["update"] = run.counted([(u, typical_traits(n, 2), 2) for n, u in enumerate(users)])
    more = [(f"cap_{prefix}_{n}", typical_traits(n, 2)) for n in range(UPSERTS, BATCH_USERS)]
    run.upsert_batch(more)
    for user, _ in more:
        run.wait_applied(user, 2)
    batch = users + [user for user, _ in more]
    result["batch"] = run.counted([(u, typical_traits(n, 3), 3) for n, u in enumerate(batch)], batch=True)
    full = f"cap_{prefix}_full"
    # 8 × 31 KiB custom traits: the 256 KiB budget, nearly full, of random letters (one
    # letter repeated would deflate to nothing in the item's format 2).
    letters = random.Random(7)
    for part in range(8):
        blob = "".join(letters.choices(string.ascii_letters + string.digits, k=31 * 1024))
        run.upsert(full, {f"blob_{part}": blob, "rev": 1})
    run.wait_applied(full, 1)
    deadline = time.monotonic() + 120
    blobs = {f"blob_{part}" for part in range(8)}
    while time.monotonic() < deadline:
        item = run.stored(full) or {}
        if blobs <= set(as_format_1({k: DESERIALIZE(v) for k, v in item.items()}).get("traits", {})):
            break
        time.sleep(0.2)
    result["full profile"] = run.counted([(full, {"plan": "enterprise", "rev": v}, v) for v in range(2, 12)])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
