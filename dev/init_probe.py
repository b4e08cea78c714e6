#!/usr/bin/env python3
"""Init time of a function binary: process start → its first request for an event.

    init_probe.py target/release/api [runs]

Serves a stand-in Lambda runtime API on loopback that never hands out an event, starts
the binary against it, and times the first `GET …/invocation/next`. Also reports the
process's peak RSS at that point (VmHWM). The first run includes a cold page cache.
"""
import http.server
import os
import subprocess
import sys
import threading
import time

first_poll = {}


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        first_poll.setdefault("at", time.perf_counter())
        time.sleep(5)  # never answer: the function stays ready


def peak_rss_kb(pid):
    """VmHWM of a live process, in kB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def probe(binary, runs=7):
    """{"runs_ms": [...], "median_warm_ms": …, "peak_rss_kb": …} of `runs` starts."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
        AWS_LAMBDA_FUNCTION_NAME="probe", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
        AWS_LAMBDA_FUNCTION_VERSION="1", AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="probe", AWS_SECRET_ACCESS_KEY="probe",
        USERS_TABLE="users", IDEMPOTENCY_TABLE="idempotency", API_KEYS_TABLE="keys",
        RATE_LIMITS_TABLE="rates", UPSERT_QUEUE_URL="http://127.0.0.1:1/queue",
    )
    times, peak_kb = [], 0
    for _ in range(runs):
        first_poll.clear()
        started = time.perf_counter()
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 10
        while "at" not in first_poll and time.perf_counter() < deadline:
            time.sleep(0.0002)
        if "at" not in first_poll:
            process.kill()
            raise SystemExit(f"{binary} never polled for an event")
        times.append((first_poll["at"] - started) * 1000)
        peak_kb = peak_rss_kb(process.pid)
        process.kill()
        process.wait()
    warm = sorted(times[1:]) or times
    return {"runs_ms": [round(t, 1) for t in times], "median_warm_ms": round(warm[len(warm) // 2], 1),
            "peak_rss_kb": peak_kb}


if __name__ == "__main__":
    result = probe(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    print(f"{sys.argv[1]}: init {' '.join(map(str, result['runs_ms']))} ms (median of warm runs "
          f"{result['median_warm_ms']} ms), peak RSS at init {result['peak_rss_kb']} kB")
