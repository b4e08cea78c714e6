#!/usr/bin/env python3
"""`make bench`: every figure of docs/performance.md from one run.

1. criterion (`cargo bench`): the api hot path (1 KB, 32 KB), auth, the consumer merge;
2. callgrind instruction count of the 1 KB hot path, when valgrind is installed (stable on
   a noisy machine, unlike time);
3. stripped arm64 binaries (`cargo lambda build --release --arm64`);
4. load runs against a release-build local stack (loopback, bounded), each next to the
   emulator's own raw rate for the same calls; then each function's peak RSS (VmHWM);
5. against the same stack, CPU per invocation, init, first invocation and peak RSS of the
   release binaries under the project's Runtime API stand-in (`invocation_probe.py`),
   and the DynamoDB capacity units per upsert (`capacity_run.py`);
6. the cost per million upserts (`cost.py`, written to docs/cost.md).

Writes target/bench/summary.json, prints the budget table, and rewrites the table between
the `bench:begin` / `bench:end` markers in docs/performance.md (`--doc-only`: only that,
from the last summary.json).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ["VF_RELEASE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost  # noqa: E402
import invocation_probe  # noqa: E402
import stack  # noqa: E402

ROOT = stack.ROOT
OUT = ROOT / "target" / "bench"
CRITERION = ROOT / "target" / "criterion"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# (name, flags): the load runs; the last, unpaced, gives the throughput ratio.
LOAD_RUNS = [
    ("paced 20/s", ["--clients", "8", "--requests", "400", "--rate", "20", "--visible-every", "2"]),
    ("paced 40/s", ["--clients", "16", "--requests", "600", "--rate", "40", "--visible-every", "3"]),
    ("unpaced", ["--clients", "8", "--requests", "600"]),
]


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(*args, env=None):
    subprocess.run(args, cwd=ROOT, check=True, env=stack.tool_env(env))


def criterion():
    run("cargo", "bench", "-p", "vibefollow-bench", "--bench", "hot_path")

    def median_us(*path):
        estimates = json.loads(CRITERION.joinpath(*path, "new", "estimates.json").read_text())
        return round(estimates["median"]["point_estimate"] / 1000, 2)

    group = "body parse + validate + hash + message"
    return {
        "hot_path_1kb_us": median_us(group, "1 KB"),
        "hot_path_32kb_us": median_us(group, "32 KB"),
        "auth_us": median_us("auth header parse + key hash"),
        "consumer_batch_of_10_us": median_us("consumer_ parse + merge a batch of 10 for one user"),
        "parts_1kb_us": {part: median_us("1 KB parts", part)
                         for part in ("JSON parse only", "canonical hash only", "message JSON only")},
    }


def instructions():
    """Instructions per 1 KB request: the difference of two callgrind runs. Valgrind hides
    SHA-NI, so SHA-256 runs in software here (about 60 k of these instructions)."""
    if not shutil.which("valgrind"):
        return None
    run("cargo", "build", "--quiet", "--release", "-p", "vibefollow-bench", "--bin", "hot_path_count")
    counts = {}
    for n in (1000, 3000):
        out = OUT / f"callgrind.{n}"
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               str(ROOT / "target/release/hot_path_count"), str(n)],
                              cwd=ROOT, check=True, capture_output=True, text=True)
        counts[n] = int(done.stderr.split("Collected :")[1].split()[0])
    return (counts[3000] - counts[1000]) // 2000


def arm64_sizes():
    run("rustup", "target", "add", "aarch64-unknown-linux-gnu")
    run("cargo", "lambda", "build", "--quiet", "--release", "--arm64", "--bin", "api", "--bin", "consumer")
    return {f: (ROOT / "target" / "lambda" / f / "bootstrap").stat().st_size for f in ("api", "consumer")}


def running_peak_rss_kb(binary):
    """VmHWM of a running instance of `binary` (one of the stack's function instances)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0].decode().endswith(f"target/release/{binary}"):
                return invocation_probe.peak_rss_mb(cmdline.parent.name) * 1024
        except (OSError, StopIteration):
            continue
    return None


def load():
    the_stack = stack.Stack(reload=False)
    runs = []
    try:
        the_stack.start()
        env = dict(the_stack.env, VF_API_URL=stack.API_URL)
        for name, flags in LOAD_RUNS:
            out = OUT / f"load-{name.replace(' ', '-').replace('/', '')}.json"
            run(str(ROOT / "target/release/load"), *flags, "--out", str(out), env=env)
            runs.append(dict(json.loads(out.read_text()), name=name))
        rss = {f: running_peak_rss_kb(f) for f in ("api", "consumer")}
        events = tool_json("event_latency.py", env)
        log("CPU per invocation (invocation_probe.py)")
        probe_env = dict(env, VF_BENCH_KEY=stack.create_key("ws_bench", "users:write,users:read", 100000))
        invocations = {case: tool_json("invocation_probe.py", probe_env, case, "--n", "300", "--cold", "5")
                       for case in invocation_probe.CASES}
        log("capacity units per upsert (capacity_run.py)")
        units = tool_json("capacity_run.py", env)
    finally:
        the_stack.stop()
    return runs, rss, events, invocations, units


def tool_json(script, env, *args):
    """The JSON a tool of dev/ prints, run against the stack."""
    out = subprocess.run([sys.executable, str(ROOT / "dev" / script), *args], cwd=ROOT, check=True,
                         env=stack.tool_env(env), capture_output=True, text=True).stdout
    return json.loads(out)


def budgets(s):
    hot, sizes, rss = s["criterion"]["hot_path_1kb_us"], s["arm64_bytes"], s["peak_rss_kb"]
    paced = s["load"][0]
    unpaced = s["load"][-1]
    ratio = unpaced["throughput_ratio"]
    cpu = {case: run["cpu_ms_per_invoke"] for case, run in s["invocations"].items()}
    cold = {case: run["cold"] for case, run in s["invocations"].items()}
    first_ratio = {case: cold[case]["first_invoke_ms"] / s["invocations"][case]["p50_ms"]
                   for case in ("api-keyed", "api-unkeyed")}
    init = max(c["init_ms"] for c in cold.values())
    units = cost.units_per_upsert(s["capacity"])
    return [
        ("api CPU per invocation, keyed", "≤ 1.0 ms", f"{cpu['api-keyed']:.2f} ms", cpu["api-keyed"] <= 1.0),
        ("api CPU per invocation, unkeyed / replayed", "≤ 0.4 ms",
         f"{cpu['api-unkeyed']:.2f} / {cpu['api-replay']:.2f} ms", max(cpu["api-unkeyed"], cpu["api-replay"]) <= 0.4),
        ("consumer CPU per batch of 10 (10 users)", "≤ 2.5 ms", f"{cpu['consumer']:.2f} ms", cpu["consumer"] <= 2.5),
        ("first invocation after init ÷ warm p50 (connections opened during init)", "≤ 2 (keyed, unkeyed)",
         " / ".join(f"{first_ratio[c]:.2f} ({cold[c]['first_invoke_ms']:.1f} ms ÷ "
                    f"{s['invocations'][c]['p50_ms']:.1f} ms)" for c in first_ratio),
         max(first_ratio.values()) <= 2),
        ("init (spawn → first request for an event, connections opened; median of 5 cold starts)", "≤ 10 ms",
         ", ".join(f"{case} {c['init_ms']:.1f} ms" for case, c in cold.items()), init <= 10),
        ("write units per keyed upsert, ~1.5 KB profile (update)", "≤ 3",
         f"{units['update']['write']:.2f} (new user: {units['new']['write']:.2f}; full profile: "
         f"{units['full profile']['write']:.2f})", units["update"]["write"] <= 3),
        ("api hot path, 1 KB body (parse + validate + canonical hash + message)", "≤ 10 µs",
         f"{hot} µs (criterion median)" + (f"; {s['instructions_1kb']:,} instructions (callgrind)"
                                           if s["instructions_1kb"] else ""), hot <= 10),
        ("peak RSS per function", "≤ 16 MB",
         "; ".join(f"{f} {(rss[f] or 0) / 1024:.1f} MiB after the load runs" for f in rss),
         all(rss[f] and rss[f] <= 16 * 1024 for f in rss)),
        ("stripped arm64 binaries", "≤ 8 MB each",
         f"api {sizes['api']:,} B, consumer {sizes['consumer']:,} B",
         max(sizes.values()) <= 8_000_000),
        ("sequential AWS calls per POST", "≤ 2 with an Idempotency-Key, ≤ 1 without",
         "3 (lease ‖ claim, send, awaited mark: the freeze rule) / 1–2 (send; the lease once per ten "
         "requests of a busy instance, once per request of a quiet one)", "over, by design"),
        ("consumer DynamoDB writes per batch", "≤ 1 per distinct user",
         "1 PutItem per distinct user, after 1 BatchGetItem", True),
        ("local throughput (unpaced) ÷ emulator raw rate for the same calls", "≥ 0.8",
         f"{ratio:.2f} ({unpaced['accepted_per_s']:.1f}/s vs {unpaced['emulator_raw_put_send_per_s']:.1f}/s)",
         ratio >= 0.8),
        ("accepted → visible p99", "≤ 300 ms at 100 req/s",
         f"{paced['visible_ms']['p99']:.0f} ms at {paced['paced_rate']}/s (moto tops out near "
         f"{unpaced['emulator_raw_put_send_per_s']:.0f}/s: 100/s cannot be offered here)",
         None),
    ]


def event_lines(s):
    e = s.get("events")
    if not e:
        return []
    return [f"Change events at {e['rate_per_s']}/s ({e['accepted']} upserts, each a new user; "
            f"`dev/event_latency.py`): accepted → event at a sink p50 / p99 "
            f"{e['event_ms']['p50']:.0f} / {e['event_ms']['p99']:.0f} ms, beside accepted → visible "
            f"through GET {e['visible_ms']['p50']:.0f} / {e['visible_ms']['p99']:.0f} ms."]


def table(s):
    status = {True: "met", False: "**over**", None: "not measurable locally"}
    rows = [f"| {what} | {limit} | {measured} | {status.get(ok, ok)} |" for what, limit, measured, ok in budgets(s)]
    load_rows = [
        f"| {r['name']} ({r['clients']} clients, {r['requests']} requests) | {r['accepted_per_s']:.1f} | "
        f"{r['post_ms']['p50']:.1f} / {r['post_ms']['p99']:.1f} ms | "
        f"{r['visible_ms']['p50']:.0f} / {r['visible_ms']['p99']:.0f} ms | "
        f"{r['emulator_raw_put_send_per_s']:.1f}/s | "
        f"{'(paced)' if r['paced_rate'] else format(r['throughput_ratio'], '.2f')} |" for r in s["load"]]
    c = s["criterion"]
    parts = ", ".join(f"{k} {v} µs" for k, v in c["parts_1kb_us"].items())
    return "\n".join([
        f"Run of {s['date']} (`make bench`, {s['machine']}).", "",
        "| budget | limit | measured | status |", "|---|---|---|---|", *rows, "",
        "| load run | accepted/s | POST p50 / p99 | accepted → visible p50 / p99 | emulator raw rate | ratio |",
        "|---|---|---|---|---|---|", *load_rows, "",
        *event_lines(s), "",
        f"Other criterion medians: 32 KB body {c['hot_path_32kb_us']} µs, auth header parse + key hash "
        f"{c['auth_us']} µs, consumer parse + merge of a batch of 10 {c['consumer_batch_of_10_us']} µs; "
        f"1 KB parts: {parts}.",
    ])


def write_summary(summary):
    summary["budgets"] = [dict(zip(("budget", "limit", "measured", "met"), b)) for b in budgets(summary)]
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(summary)
    print(text)
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main():
    if sys.argv[1:] == ["--doc-only"]:
        summary = json.loads((OUT / "summary.json").read_text())
        write_summary(summary)
        return cost.write_doc(summary)
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{os.cpu_count()} cores, {os.uname().machine}"}
    log("criterion")
    summary["criterion"] = criterion()
    log("instruction count")
    summary["instructions_1kb"] = instructions()
    log("arm64 binaries")
    summary["arm64_bytes"] = arm64_sizes()
    run("cargo", "build", "--quiet", "--release", "--workspace", "--bin", "api", "--bin", "consumer", "--bin", "load")
    log("load runs")
    (summary["load"], summary["peak_rss_kb"], summary["events"], summary["invocations"],
     summary["capacity"]) = load()
    write_summary(summary)
    cost.write_doc(summary)
    log(f"written: {OUT / 'summary.json'}, {DOC.relative_to(ROOT)} and docs/cost.md")


if __name__ == "__main__":
    main()
