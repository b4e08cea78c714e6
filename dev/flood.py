#!/usr/bin/env python3
"""A flood of bad API keys must not starve the valid traffic: measured.

    flood.py [--rate 20] [--seconds 40] [--bad 2000] [--threads 4]
             (inside a running stack: `dev/stack.py run -- .venv/bin/python dev/flood.py`,
              or `make flood`)

1. warm-up: `--rate` valid keyed upserts a second for 2 s (one workspace, one key), not
   counted: the api instances the stack started have each read the key once;
2. alone: the same steady valid load for `--seconds`; POST latency p50 / p99;
3. under flood: the same valid load again while `--threads` threads fire `--bad` POSTs as
   fast as they are answered, each with its own random well-formed key (`sk_live_` + 40
   alphanumerics) that no workspace has; every one must be refused with 401
   (`--bad 0`: the same second phase without a flood, a control);
4. after: once the flood is over, the same valid load again: back to the first phase's
   latency says the difference was the flood's, not a drift of the machine or the stack.

Latency is the client's (a fresh connection per request, as urllib does) beside the api's
own `latency_ms` from its log line; the upsert queue's depth is sampled every second.

The api logs one JSON line per request (`VF_FUNCTION_LOG`) with `key_cached`: whether the
key came from the instance's cache. Live keys and unknown keys are cached apart, in two
bounded LRUs, so the flood's unknown keys cannot evict the valid one. Joined to each
request by its `x-request-id`, and to the instance that served it by the faithful
runtime's `X-Faithful-Instance`, the valid requests' misses are split into an instance's
first request with the key (each instance has its own cache: a cold start or an instance
that had not served this key misses once), and the rest (a cache entry lives 60 s: one
miss per instance and minute at a steady rate; more would be evictions). Then every
valid upsert is checked to be applied (readable through GET).

Loopback only; bounded by the counts and a 10 s timeout per request. Prints JSON and
writes it to target/bench/flood.json.
"""
import argparse
import json
import os
import random
import string
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402

OUT = stack.ROOT / "target" / "bench" / "flood.json"
WARMUP_SECONDS = 2
ALPHANUMERIC = string.ascii_letters + string.digits


def log(message):
    print(f"[flood] {message}", file=sys.stderr, flush=True)


def quantile(values, q):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def bad_key(rng):
    return "sk_live_" + "".join(rng.choice(ALPHANUMERIC) for _ in range(40))


class Client:
    def __init__(self, api):
        self.api = api

    def call(self, method, path, key, body=None, headers=None):
        """(status, ms, request id, instance) of one request; never raises for a status."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
                status, answer_headers = response.status, response.headers
        except urllib.error.HTTPError as e:
            e.read()
            status, answer_headers = e.code, e.headers
        except OSError as e:  # a timeout or a refused connection: counted, not raised
            return {"status": f"error: {type(e).__name__}", "ms": (time.monotonic() - started) * 1000,
                    "request_id": None, "instance": None, "at": started}
        return {"status": status, "ms": (time.monotonic() - started) * 1000,
                "request_id": answer_headers.get("x-request-id"),
                "instance": answer_headers.get("X-Faithful-Instance"), "at": started}

    def upsert(self, key, user, i):
        body = {"external_user_id": user, "email": f"{user}@example.com",
                "traits": {"plan": "pro" if i % 2 else "free", "logins": i}}
        return self.call("POST", "/api/v1/users", key, body, {"Idempotency-Key": str(uuid.uuid4())})


def steady(client, key, prefix, rate, seconds):
    """`rate` upserts a second for `seconds`, each sent at its time (an open loop: a slow
    answer does not delay the next request), each a user of its own."""
    results = [None] * (rate * seconds)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as senders:
        for i in range(len(results)):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))

            def send(i=i):
                results[i] = dict(client.upsert(key, f"{prefix}_{i}", i), user=f"{prefix}_{i}")
            senders.submit(send)
    return results


def flood(client, count, threads, seed):
    """`count` POSTs with random bad keys from `threads` threads, back to back."""
    results, lock = [], threading.Lock()

    def worker(n, rng):
        for i in range(n):
            answer = client.upsert(bad_key(rng), f"flood_{i}", i)
            with lock:
                results.append(answer)

    shares = [count // threads + (1 if t < count % threads else 0) for t in range(threads)]
    workers = [threading.Thread(target=worker, args=(n, random.Random(seed + t)), daemon=True)
               for t, n in enumerate(shares)]
    started = time.monotonic()
    for w in workers:
        w.start()
    return workers, results, started


def request_lines(path, offset):
    """{request_id: the api's request line} from the function log after `offset`."""
    lines = {}
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        for raw in log_file:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            fields = dict(line, **line.get("fields", {})) if isinstance(line.get("fields"), dict) else line
            if fields.get("message") == "request" and fields.get("request_id"):
                lines[fields["request_id"]] = fields
    return lines


def latency(results):
    ms = [r["ms"] for r in results]
    return {"requests": len(results), "p50_ms": quantile(ms, 0.5), "p99_ms": quantile(ms, 0.99),
            "max_ms": round(max(ms), 1) if ms else None}


# A cached key is read again 60 s after it was read (src/lambda/http/keys.rs); a miss
# this long after the instance's last read is that, with 2 s for when in its request
# each read happened.
KEY_TTL_S = 60
TTL_SLACK_S = 2


def cache_figures(results, lines, last_read):
    """key_cached of the valid requests, misses split into an instance's first request
    with the key, an entry past its 60 s, and any other (an eviction: there should be
    none). `last_read` ({instance: when it last read the key}) carries over between phases."""
    figures = Counter()
    for r in sorted(results, key=lambda r: r["at"]):
        line = lines.get(r["request_id"])
        if line is None or line.get("key_cached") is None:
            figures["no log line"] += 1
            continue
        cached = line["key_cached"]
        figures["key_cached true" if cached else "key_cached false"] += 1
        if not cached:
            if r["instance"] not in last_read:
                figures["misses: an instance's first request"] += 1
            elif r["at"] - last_read[r["instance"]] >= KEY_TTL_S - TTL_SLACK_S:
                figures["misses: entry past its 60 s"] += 1
            else:
                figures["misses: other (evicted?)"] += 1
            last_read[r["instance"]] = r["at"]
    looked_up = figures["key_cached true"] + figures["key_cached false"]
    return dict(figures, hit_rate=round(figures["key_cached true"] / looked_up, 4) if looked_up else None,
                instances=len({r["instance"] for r in results if r["instance"]}))


def wait_applied(client, key, users, deadline_s=90):
    """How many of `users` are readable through GET before the deadline, and when."""
    pending, started = set(users), time.monotonic()
    while pending and time.monotonic() - started < deadline_s:
        with ThreadPoolExecutor(max_workers=4) as readers:
            found = readers.map(lambda u: (u, client.call("GET", f"/api/v1/users/{u}", key)["status"]),
                                sorted(pending))
            pending -= {u for u, status in found if status == 200}
        if pending:
            time.sleep(1)
    return {"upserts": len(users), "applied": len(users) - len(pending),
            "all_applied_after_s": None if pending else round(time.monotonic() - started, 1)}


class QueueDepth:
    """The upsert queue's depth (visible + in flight), sampled once a second from moto
    directly: how far the consumer is behind. Locally that matters twice: moto's
    SendMessage slows down as its queue fills, so a backlog lengthens every POST."""

    def __init__(self, queue_url):
        self.sqs = stack.emulator_session().client("sqs", endpoint_url=stack.EMULATOR_URL)
        self.queue_url = queue_url
        self.samples = []  # (monotonic time, depth)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while not self.done.wait(1.0):
            try:
                depth = stack.queue_depth(self.sqs, self.queue_url)
            except Exception:  # a sample lost to a busy emulator is left out
                continue
            self.samples.append((time.monotonic(), depth))

    def between(self, start, end):
        depths = [d for t, d in self.samples if start <= t <= end]
        return {"max": max(depths), "last": depths[-1], "samples": len(depths)} if depths else None

    def stop(self):
        self.done.set()
        self.thread.join(5)


def server_latency(results, lines):
    """p50 / p99 of the api's own `latency_ms` for these requests (from its log lines)."""
    ms = [lines[r["request_id"]]["latency_ms"] for r in results
          if r["request_id"] in lines and "latency_ms" in lines[r["request_id"]]]
    return {"p50_ms": quantile(ms, 0.5), "p99_ms": quantile(ms, 0.99)}


def fleet(api):
    try:
        with urllib.request.urlopen(f"{api}/__fleet", timeout=5) as response:
            stats = json.loads(response.read())["functions"]["api"]
    except (OSError, ValueError, KeyError):
        return None
    return {k: stats.get(k) for k in ("alive", "cold_starts", "invocations") if k in stats}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=20, help="valid upserts a second")
    parser.add_argument("--seconds", type=int, default=40, help="length of each valid phase")
    parser.add_argument("--bad", type=int, default=2000, help="requests with bad keys")
    parser.add_argument("--threads", type=int, default=4, help="threads that send them")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not (0 < args.rate <= 100 and 0 < args.seconds <= 120 and 0 <= args.bad <= 10000 and 0 < args.threads <= 16):
        parser.error("bounded: rate ≤ 100/s, seconds ≤ 120, bad ≤ 10,000 (0: the second phase without a "
                     "flood, a control), threads ≤ 16")
    env = os.environ if "VF_API_URL" in os.environ else stack.read_env_file()
    api, log_path = env["VF_API_URL"], env["VF_FUNCTION_LOG"]
    if not api.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit(f"flood.py runs against a local stack only, not {api}")
    client = Client(api)
    run = uuid.uuid4().hex[:8]
    workspace = f"flood-{run}"
    key = stack.create_key(workspace, "users:write,users:read", 100000)
    offset = os.path.getsize(log_path)
    fleet_before = fleet(api)
    depth = QueueDepth(env["UPSERT_QUEUE_URL"])

    log(f"warm-up: {args.rate}/s for {WARMUP_SECONDS} s")
    warmup = steady(client, key, f"{run}_w", args.rate, WARMUP_SECONDS)
    log(f"alone: {args.rate}/s for {args.seconds} s")
    alone_started = time.monotonic()
    alone = steady(client, key, f"{run}_a", args.rate, args.seconds)
    alone_ended = time.monotonic()
    fleet_alone = fleet(api)
    log(f"under flood: {args.rate}/s for {args.seconds} s, {args.bad} bad keys from {args.threads} threads")
    workers, bad, flood_started = flood(client, args.bad, args.threads, seed=int(run, 16))
    flooded = steady(client, key, f"{run}_f", args.rate, args.seconds)
    for w in workers:
        w.join(timeout=max(1.0, 600 - (time.monotonic() - flood_started)))
    flood_ended = max((r["at"] + r["ms"] / 1000 for r in bad), default=flood_started)
    flooded_ended = max(time.monotonic(), flood_ended)
    fleet_after = fleet(api)
    during = [r for r in flooded if flood_started <= r["at"] <= flood_ended]
    log(f"after: {args.rate}/s for {args.seconds} s, the flood over")
    after_started = time.monotonic()
    after = steady(client, key, f"{run}_b", args.rate, args.seconds)
    after_ended = time.monotonic()

    time.sleep(2)  # the last lines reach the log
    lines = request_lines(log_path, offset)
    seen = {}
    cache_warmup = cache_figures(warmup, lines, seen)
    cache_alone = cache_figures(alone, lines, seen)
    cache_flood = cache_figures(flooded, lines, seen)
    cache_after = cache_figures(after, lines, seen)
    bad_cached = Counter(str(lines.get(r["request_id"], {}).get("key_cached")) for r in bad)
    log("checking that every valid upsert was applied")
    valid = alone + flooded + after
    applied = wait_applied(client, key, [r["user"] for r in valid if r["status"] == 202])
    depth.stop()

    summary = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        "valid": {"rate_per_s": args.rate, "seconds": args.seconds, "keyed": True},
        "alone": dict(latency(alone), statuses=dict(Counter(str(r["status"]) for r in alone)),
                      api_latency=server_latency(alone, lines), key_cache=cache_alone,
                      upsert_queue_depth=depth.between(alone_started, alone_ended)),
        "under_flood": dict(latency(flooded), statuses=dict(Counter(str(r["status"]) for r in flooded)),
                            api_latency=server_latency(flooded, lines), key_cache=cache_flood,
                            upsert_queue_depth=depth.between(flood_started, flooded_ended),
                            while_the_flood_ran=latency(during)),
        "after": dict(latency(after), statuses=dict(Counter(str(r["status"]) for r in after)),
                      api_latency=server_latency(after, lines), key_cache=cache_after,
                      upsert_queue_depth=depth.between(after_started, after_ended)),
        "warmup_key_cache": cache_warmup,
        "bad": dict(latency(bad), api_latency=server_latency(bad, lines), threads=args.threads,
                    seconds=round(flood_ended - flood_started, 1),
                    rate_per_s=round(len(bad) / max(0.001, flood_ended - flood_started), 1),
                    statuses=dict(Counter(str(r["status"]) for r in bad)),
                    all_401=len(bad) == args.bad and all(r["status"] == 401 for r in bad),
                    key_cached=dict(bad_cached)),
        "applied": applied,
        "api_fleet": {"before": fleet_before, "after_alone": fleet_alone, "after_flood": fleet_after},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    valid_ok = all(r["status"] == 202 for r in valid)
    return 0 if summary["bad"]["all_401"] and valid_ok and applied["applied"] == applied["upserts"] else 1


if __name__ == "__main__":
    sys.exit(main())
