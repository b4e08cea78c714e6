#!/usr/bin/env python3
"""CPU, init and memory of a function binary, invocation by invocation, as Lambda runs it.

    invocation_probe.py CASE [--n 500] [--repeat 3] [--cold 10] [--binaries DIR] [--compare DIR]
                                                                     (inside a running stack)

Each process is one execution environment of the faithful runtime (`dev/faithful`):
events handed out one at a time, the process frozen between them. Measured from `/proc`:

- init: spawn → the first `GET /next` (the faithful runtime's `initialized`);
- CPU per invocation: CPU time of the process's threads (schedstat) between two idle
  points (after the warm-up, after the last invocation), ÷ invocations: what Lambda
  bills, independent of the emulator's latency; cold: CPU of init + the first invocation;
- first invocation after init (wall, ms) and warm percentiles;
- peak RSS (VmHWM), and the bytes the function logs per invocation.

CASE is `api-keyed` (a fresh Idempotency-Key each), `api-unkeyed`, `api-replay` (one key
and body: the first is processed, the rest replayed) or `consumer` (SQS batches of 10
messages over 100 users). The stack's variables (`dev/stack.py run`) name the tables and
the queue; `VF_BENCH_KEY` is an API key with `users:write` and a high rate limit.
Prints one JSON summary; medians over the processes. `--compare DIR` measures DIR's
binaries of the same function too, process by process in turn with `--binaries` (A B,
then B A, …: both see the same machine in the same minute), and adds their summary under
`"compare"`.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faithful import FunctionConfig, Spawner  # noqa: E402
from faithful.runtime_api import ExecutionEnvironment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SDK_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "SSL_CERT_FILE")


def config_variables(source=ROOT / "src" / "config.rs"):
    """The variables the functions read (src/config.rs, `Resources::ENV_VARS`), from the
    source itself, so that a variable added there is passed here too."""
    found = re.search(r"ENV_VARS: \[&'static str; \d+\] = \[(.*?)\];", source.read_text(), re.S)
    if found is None:
        raise SystemExit(f"{source}: no Resources::ENV_VARS")
    return tuple(re.findall(r'"([A-Z0-9_]+)"', found.group(1)))


# Every variable of src/config.rs, and the SDK's.
FUNCTION_VARIABLES = config_variables() + SDK_VARIABLES


def user_body(k, run):
    return {"external_user_id": f"bench_{run}_{k}", "email": f"bench.{run}.{k}@example.com",
            "traits": {"name": f"Bench User {k}", "plan": "pro" if k % 2 else "free",
                       "company": "Example Inc", "logins": k, "beta": k % 3 == 0,
                       "signupDate": "2026-05-17T14:00:00Z"}}


# Users per `api-batch` call. The probe makes a tenth as many of its calls as of the
# others' (each enqueues this many messages, which the stack's consumer then applies),
# and no cold start: its binary's is api-keyed's, and the backlog would slow it.
BATCH_USERS = 100
BATCH_CALLS_SHARE = 10


def api_event(i, run, key, mode):
    """An API Gateway HTTP API (payload 2.0) event for POST /api/v1/users, or for
    /api/v1/users/batch with BATCH_USERS upserts of the same BATCH_USERS users each time
    (`batch`: keyed, as a bulk sync would send it)."""
    if mode == "batch":
        path = "/api/v1/users/batch"
        body = json.dumps({"users": [user_body(k, run) for k in range(BATCH_USERS)]}, separators=(",", ":"))
    else:
        path = "/api/v1/users"
        body = json.dumps(user_body(0 if mode == "replay" else i, run), separators=(",", ":"))
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
               "content-length": str(len(body)), "host": "abc123.execute-api.us-east-1.amazonaws.com",
               "user-agent": "vibefollow-probe/1.0", "x-forwarded-for": "203.0.113.10",
               "x-forwarded-proto": "https"}
    if mode != "unkeyed":
        headers["idempotency-key"] = f"probe-{run}" if mode == "replay" else str(uuid.uuid4())
    now = time.time()
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": headers, "isBase64Encoded": False, "body": body,
            "requestContext": {"accountId": "123456789012", "apiId": "abc123", "stage": "$default",
                               "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                               "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                                        "sourceIp": "203.0.113.10", "userAgent": "vibefollow-probe/1.0"},
                               "requestId": uuid.uuid4().hex, "routeKey": "$default",
                               "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                               "timeEpoch": int(now * 1000)}}


def consumer_event(i, run, size=10, users=100):
    """An SQS batch of upsert messages as the api enqueues them (message version 1)."""
    records = []
    now_ms = int(time.time() * 1000)
    for j in range(size):
        k = i * size + j
        body = user_body(k, run)
        traits = body["traits"]
        message = {"version": 1, "workspace_id": "ws_probe", "external_user_id": f"bench_{run}_{k % users}",
                   "stamp": {"accepted_at": now_ms + k, "request_id": uuid.uuid4().hex},
                   "changes": {"profile": {"email": body["email"], "name": traits["name"], "plan": traits["plan"],
                                           "company": traits["company"], "signup_date": traits["signupDate"]},
                               "traits": {"logins": traits["logins"], "beta": traits["beta"]}}}
        records.append({"messageId": str(uuid.uuid4()), "receiptHandle": uuid.uuid4().hex,
                        "body": json.dumps(message, separators=(",", ":")),
                        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(now_ms)},
                        "messageAttributes": {}, "eventSource": "aws:sqs",
                        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:upserts", "awsRegion": "us-east-1"})
    return {"Records": records}


CASES = {
    "api-keyed": ("api", lambda i, run, key: api_event(i, run, key, "keyed")),
    "api-unkeyed": ("api", lambda i, run, key: api_event(i, run, key, "unkeyed")),
    "api-replay": ("api", lambda i, run, key: api_event(i, run, key, "replay")),
    "consumer": ("consumer", lambda i, run, key: consumer_event(i, run)),
    "api-batch": ("api", lambda i, run, key: api_event(i, run, key, "batch")),
}


def cpu_ms(pid):
    """CPU time of the process's threads so far, in ns from schedstat (utime/stime in
    /proc/PID/stat count 10 ms ticks: too coarse for one cold start)."""
    total_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
            total_ns += int(schedstat.read().split()[0])
    return total_ns / 1e6


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Probe:
    def __init__(self, case, binary_dir, log_name=None):
        function, self.event = CASES[case]
        env = {name: os.environ[name] for name in FUNCTION_VARIABLES if name in os.environ}
        binary = Path(binary_dir) / function
        if not binary.is_file():
            raise SystemExit(f"invocation_probe: no {function} binary in {binary_dir}")
        self.config = FunctionConfig(name=f"probe-{function}", binary=str(binary), env=env)
        self.key = os.environ.get("VF_BENCH_KEY", "")
        self.spawner = Spawner()
        # Log bytes per invocation are read from this file's growth: one file per binary.
        self.log = ROOT / "target" / "bench" / (log_name or f"probe-{case}.log")
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def environment(self):
        """A started environment, initialized, and its init time in ms."""
        env = ExecutionEnvironment(self.config.name, self.config, self.log, self.spawner)
        started = time.perf_counter()
        env.start()
        env.wait_initialized()
        return env, (time.perf_counter() - started) * 1000

    def invoke(self, env, event):
        started = time.perf_counter()
        outcome = env.invoke(json.dumps(event).encode())
        elapsed = (time.perf_counter() - started) * 1000
        if not outcome.ok:
            raise SystemExit(f"{self.config.name}: invocation failed: {outcome.error_body()}")
        answer = json.loads(outcome.payload)
        if answer.get("statusCode", 202) >= 300 or answer.get("batchItemFailures"):
            raise SystemExit(f"{self.config.name}: unexpected answer {outcome.payload[:300]!r}")
        return elapsed

    def warm(self, n, warmup):
        """One process: init, the first invocation, `warmup` more, then `n` measured."""
        run = uuid.uuid4().hex[:8]
        env, init_ms = self.environment()
        try:
            first_ms = self.invoke(env, self.event(0, run, self.key))
            for i in range(1, warmup + 1):
                self.invoke(env, self.event(i, run, self.key))
            before, log_before = cpu_ms(env.process.pid), self.log.stat().st_size
            times = [self.invoke(env, self.event(warmup + 1 + i, run, self.key)) for i in range(n)]
            cpu = (cpu_ms(env.process.pid) - before) / n
            log_bytes = (self.log.stat().st_size - log_before) / n
            rss = peak_rss_mb(env.process.pid)
        finally:
            env.kill("stopped")
            env.join(5)
        return {"init_ms": init_ms, "first_invoke_ms": first_ms, "cpu_ms_per_invoke": cpu,
                "p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90),
                "p99_ms": percentile(times, 99), "peak_rss_mb": rss, "log_bytes_per_invoke": log_bytes}

    def cold(self):
        """One process: init and one invocation; CPU of both together."""
        run = uuid.uuid4().hex[:8]
        env, init_ms = self.environment()
        try:
            first_ms = self.invoke(env, self.event(0, run, self.key))
            return {"init_ms": init_ms, "first_invoke_ms": first_ms, "cold_cpu_ms": cpu_ms(env.process.pid),
                    "peak_rss_mb": peak_rss_mb(env.process.pid)}
        finally:
            env.kill("stopped")
            env.join(5)


def medians(runs):
    return {name: round(statistics.median(run[name] for run in runs), 3) for name in runs[0]}


def measure(case, n=500, warmup=20, repeat=3, cold=0, binary_dir=ROOT / "target" / "release", compare=None):
    """Medians over `repeat` warm processes (and `cold` cold starts) of `binary_dir`'s
    binary; with `compare` (a directory), of that one's too, interleaved process by
    process, under `"compare"`."""
    if case == "api-batch":
        n, warmup, cold = max(1, n // BATCH_CALLS_SHARE), max(1, warmup // BATCH_CALLS_SHARE), 0
    probes = [Probe(case, binary_dir)]
    if compare is not None:
        probes.append(Probe(case, compare, f"probe-{case}-compare.log"))
    warm, cold_runs = [[] for _ in probes], [[] for _ in probes]
    for i in range(repeat):
        # A B, B A, …: a drift of the machine's load falls on both alike.
        for k in (range(len(probes)) if i % 2 == 0 else reversed(range(len(probes)))):
            warm[k].append(probes[k].warm(n, warmup))
    for i in range(cold):
        for k in (range(len(probes)) if i % 2 == 0 else reversed(range(len(probes)))):
            cold_runs[k].append(probes[k].cold())
    summaries = []
    for probe, warm_runs, cold_of_probe in zip(probes, warm, cold_runs):
        summary = dict(medians(warm_runs), case=case, n=n, repeat=repeat,
                       binaries=str(Path(probe.config.binary).parent),
                       cpu_ms_per_process=[round(run["cpu_ms_per_invoke"], 3) for run in warm_runs])
        if cold_of_probe:
            summary["cold"] = medians(cold_of_probe)
            summary["cold_starts"] = len(cold_of_probe)
        summaries.append(summary)
    if compare is not None:
        summaries[0]["compare"] = summaries[1]
    return summaries[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", type=int, default=0)
    parser.add_argument("--binaries", type=Path, default=ROOT / "target" / "release")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also measure DIR's binary, interleaved with --binaries' (under \"compare\")")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    print(json.dumps(measure(args.case, args.n, args.warmup, args.repeat, args.cold, args.binaries, args.compare)))


if __name__ == "__main__":
    main()
