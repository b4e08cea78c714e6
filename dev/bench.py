#!/usr/bin/env python3
"""`make bench` (a quick run) and `make bench-full` (every figure of docs/performance.md).

    bench.py [--full] [--compare-binaries DIR]     bench.py --doc-only

1. criterion (`cargo bench`): the api hot path (1 KB, 32 KB), auth, the consumer merge
   (quick: 1 s warm-up and 2 s of measurement per bench instead of criterion's 3 + 5);
2. full only: callgrind instruction count of the 1 KB hot path, when valgrind is installed
   (stable on a noisy machine, unlike time);
3. full only: stripped arm64 binaries (`cargo lambda build --release --arm64`, the slowest
   step by far);
4. load runs against a release-build local stack (loopback, bounded), each next to the
   emulator's own raw rate for the same calls; then each function's peak RSS (VmHWM)
   (quick: paced 20/s and unpaced, shorter; full: also paced 40/s);
5. against the same stack, change-event latency (`event_latency.py`; quick: 10 s instead
   of 20), CPU per invocation, init, first invocation and peak RSS of the release binaries
   under the project's Runtime API stand-in (`invocation_probe.py`; quick: 2 processes ×
   200 invocations and 3 cold starts per case, full: 3 × 300 and 5), and the DynamoDB
   capacity units per upsert (`capacity_run.py`);
6. the cost per million upserts (`cost.py`, written to docs/cost.md).

`--compare-binaries DIR` (`make bench COMPARE=DIR`): the probe also measures DIR's `api`
and `consumer` (a copy of target/release from before a change, say), process by process
in turn with this build's, in the same stack run; the summary and the table show both.

Writes target/bench/summary.json, prints the budget table, and rewrites the table between
the `bench:begin` / `bench:end` markers in docs/performance.md, saying which run it came
from; a row the quick run does not measure says so (`--doc-only`: only the docs, from the
last summary.json).
"""
import argparse
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
# What each run measures. Load runs are (name, flags): the first, paced, gives accepted →
# visible; the last, unpaced, the throughput ratio.
RUNS = {
    "quick": {
        "make": "make bench",
        "criterion": ["--", "--warm-up-time", "1", "--measurement-time", "2"],
        "instructions": False,
        "arm64": False,
        "load": [
            ("paced 20/s", ["--clients", "8", "--requests", "200", "--rate", "20", "--visible-every", "2"]),
            ("unpaced", ["--clients", "8", "--requests", "300"]),
        ],
        "event_seconds": 10,
        "probe": {"n": 200, "repeat": 2, "cold": 3},
    },
    "full": {
        "make": "make bench-full",
        "criterion": [],
        "instructions": True,
        "arm64": True,
        "load": [
            ("paced 20/s", ["--clients", "8", "--requests", "400", "--rate", "20", "--visible-every", "2"]),
            ("paced 40/s", ["--clients", "16", "--requests", "600", "--rate", "40", "--visible-every", "3"]),
            ("unpaced", ["--clients", "8", "--requests", "600"]),
        ],
        "event_seconds": 20,
        "probe": {"n": 300, "repeat": 3, "cold": 5},
    },
}


STARTED = time.monotonic()


def log(message):
    elapsed = int(time.monotonic() - STARTED)
    print(f"[bench {elapsed // 60}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def run(*args, env=None):
    subprocess.run(args, cwd=ROOT, check=True, env=stack.tool_env(env))


def criterion(flags=()):
    run("cargo", "bench", "-p", "vibefollow-bench", "--bench", "hot_path", *flags)

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


def load(config, compare=None):
    """Everything measured against one local stack: a dict of summary keys."""
    the_stack = stack.Stack(reload=False)
    measured = {"load": []}
    try:
        the_stack.start()
        env = dict(the_stack.env, VF_API_URL=stack.API_URL)
        for name, flags in config["load"]:
            log(f"load run: {name}")
            out = OUT / f"load-{name.replace(' ', '-').replace('/', '')}.json"
            run(str(ROOT / "target/release/load"), *flags, "--out", str(out), env=env)
            measured["load"].append(dict(json.loads(out.read_text()), name=name))
        measured["peak_rss_kb"] = {f: running_peak_rss_kb(f) for f in ("api", "consumer")}
        log("change events (event_latency.py)")
        measured["events"] = tool_json("event_latency.py",
                                        dict(env, VF_EVENT_BENCH_SECONDS=str(config["event_seconds"])),
                                        partial_ok=True)
        probe = config["probe"]
        log(f"CPU per invocation (invocation_probe.py: {probe['repeat']} × {probe['n']} per case"
            + (f", interleaved with {compare}" if compare else "") + ")")
        probe_env = dict(env, VF_BENCH_KEY=stack.create_key("ws_bench", "users:write,users:read", 100000))
        probe_args = ["--n", str(probe["n"]), "--repeat", str(probe["repeat"]), "--cold", str(probe["cold"])]
        if compare:
            probe_args += ["--compare", str(compare)]
        invocations = {case: tool_json("invocation_probe.py", probe_env, case, *probe_args)
                       for case in invocation_probe.CASES}
        if compare:
            shown = compare.relative_to(ROOT) if compare.is_relative_to(ROOT) else compare
            measured["compare"] = {"binaries": str(shown),
                                   "invocations": {case: i.pop("compare") for case, i in invocations.items()}}
        measured["invocations"] = invocations
        wait_drained(env["UPSERT_QUEUE_URL"])
        log("capacity units per upsert (capacity_run.py)")
        measured["capacity"] = tool_json("capacity_run.py", env)
    finally:
        the_stack.stop()
    return measured


def wait_drained(queue_url):
    """Until the stack's consumer has applied what the probe enqueued (its api-batch case
    leaves thousands of messages), so that the capacity run counts only its own
    upserts. Gives up when the queue has not shrunk for a minute."""
    sqs = stack.emulator_session().client("sqs", endpoint_url=stack.EMULATOR_URL)
    least, since = None, time.monotonic()
    while True:
        depth = stack.queue_depth(sqs, queue_url)
        if depth == 0:
            return
        if least is None or depth < least:
            least, since = depth, time.monotonic()
        elif time.monotonic() - since > 60:
            raise SystemExit(f"bench: the upsert queue stopped draining at {depth} messages")
        time.sleep(0.5)


def tool_json(script, env, *args, partial_ok=False):
    """The JSON a tool of dev/ prints, run against the stack. `partial_ok`: a tool that
    exits non-zero after printing its figures (some events never arrived) still counts,
    its exit status kept as `"exit_status"`."""
    done = subprocess.run([sys.executable, str(ROOT / "dev" / script), *args], cwd=ROOT,
                          env=stack.tool_env(env), capture_output=True, text=True)
    if done.returncode and not (partial_ok and done.stdout.strip()):
        sys.stderr.write(done.stderr)
        raise subprocess.CalledProcessError(done.returncode, script, done.stdout, done.stderr)
    result = json.loads(done.stdout)
    if done.returncode:
        log(f"{script} exited with {done.returncode}; its figures are kept")
        result["exit_status"] = done.returncode
    return result


def run_of(s):
    """"quick" or "full"; a summary from before the split was a full run."""
    return s.get("run", "full")


def not_measured(s):
    """What a row says of a figure this run did not measure."""
    return "not in the quick run (make bench-full)" if run_of(s) == "quick" else "not measured in this run"


def budgets(s):
    """(budget, limit, measured, status) rows: status True (met), False (over), None (not
    measurable locally), or a string said as it is. Any figure may be missing (a quick
    run has no arm64 sizes and no instruction count; an older summary may lack others)."""
    skipped = not_measured(s)
    crit = s.get("criterion") or {}
    sizes, rss = s.get("arm64_bytes"), s.get("peak_rss_kb")
    loads = s.get("load") or []
    paced = next((r for r in loads if r.get("paced_rate")), None)
    unpaced = next((r for r in reversed(loads) if not r.get("paced_rate")), None)
    invocations = s.get("invocations") or {}
    cpu = {case: run["cpu_ms_per_invoke"] for case, run in invocations.items()}
    cold = {case: run["cold"] for case, run in invocations.items() if run.get("cold")}
    rows = []

    def row(what, limit, measured, ok, needs):
        """A row when all its inputs were measured, else one that says it was not."""
        rows.append((what, limit, measured(), ok()) if needs else (what, limit, "—", skipped))

    row("api CPU per invocation, keyed", "≤ 1.0 ms", lambda: f"{cpu['api-keyed']:.2f} ms",
        lambda: cpu["api-keyed"] <= 1.0, "api-keyed" in cpu)
    row("api CPU per invocation, unkeyed / replayed", "≤ 0.4 ms",
        lambda: f"{cpu['api-unkeyed']:.2f} / {cpu['api-replay']:.2f} ms",
        lambda: max(cpu["api-unkeyed"], cpu["api-replay"]) <= 0.4, {"api-unkeyed", "api-replay"} <= cpu.keys())
    row("consumer CPU per batch of 10 (10 users)", "≤ 2.5 ms", lambda: f"{cpu['consumer']:.2f} ms",
        lambda: cpu["consumer"] <= 2.5, "consumer" in cpu)
    firsts = [c for c in ("api-keyed", "api-unkeyed") if c in cold]
    first_ratio = {c: cold[c]["first_invoke_ms"] / invocations[c]["p50_ms"] for c in firsts}
    row("first invocation after init ÷ warm p50 (connections opened during init)", "≤ 2 (keyed, unkeyed)",
        lambda: " / ".join(f"{first_ratio[c]:.2f} ({cold[c]['first_invoke_ms']:.1f} ms ÷ "
                           f"{invocations[c]['p50_ms']:.1f} ms)" for c in firsts),
        lambda: max(first_ratio.values()) <= 2, firsts)
    colds = max((len_cold(s, c) for c in cold), default=RUNS[run_of(s)]["probe"]["cold"])
    row(f"init (spawn → first request for an event, connections opened; median of {colds} cold starts)", "≤ 10 ms",
        lambda: ", ".join(f"{case} {c['init_ms']:.1f} ms" for case, c in cold.items()),
        lambda: max(c["init_ms"] for c in cold.values()) <= 10, cold)
    units = cost.units_per_upsert(s["capacity"]) if s.get("capacity") else {}
    row("write units per keyed upsert, ~1.5 KB profile (update)", "≤ 3",
        lambda: f"{units['update']['write']:.2f} (new user: {units['new']['write']:.2f}; full profile: "
                f"{units['full profile']['write']:.2f})",
        lambda: units["update"]["write"] <= 3, {"update", "new", "full profile"} <= units.keys())
    hot = crit.get("hot_path_1kb_us")
    instructions = s.get("instructions_1kb")
    counted = (f"; {instructions:,} instructions (callgrind)" if instructions
               else "; callgrind count: not in the quick run (make bench-full)" if run_of(s) == "quick" else "")
    row("api hot path, 1 KB body (parse + validate + canonical hash + message)", "≤ 10 µs",
        lambda: f"{hot} µs (criterion median){counted}", lambda: hot <= 10, hot is not None)
    row("peak RSS per function", "≤ 16 MB",
        lambda: "; ".join(f"{f} {(rss[f] or 0) / 1024:.1f} MiB after the load runs" for f in rss),
        lambda: all(rss[f] and rss[f] <= 16 * 1024 for f in rss), rss)
    row("stripped arm64 binaries", "≤ 8 MB each",
        lambda: ", ".join(f"{f} {b:,} B" for f, b in sizes.items()),
        lambda: max(sizes.values()) <= 8_000_000, sizes)
    rows.append(("sequential AWS calls per POST", "≤ 2 with an Idempotency-Key, ≤ 1 without",
                 "3 (lease ‖ claim, send, awaited mark: the freeze rule) / 1–2 (send; the lease once a "
                 "second per instance in a quiet workspace, once per ten requests in a busy one, once per "
                 "request under ~2 a second)", "over, by design"))
    rows.append(("consumer DynamoDB writes per batch", "≤ 1 per distinct user",
                 "1 PutItem per distinct user, after 1 BatchGetItem", True))
    row("local throughput (unpaced) ÷ emulator raw rate for the same calls", "≥ 0.8",
        lambda: f"{unpaced['throughput_ratio']:.2f} ({unpaced['accepted_per_s']:.1f}/s vs "
                f"{unpaced['emulator_raw_put_send_per_s']:.1f}/s)",
        lambda: unpaced["throughput_ratio"] >= 0.8, unpaced)
    ceiling = (f"moto tops out near {unpaced['emulator_raw_put_send_per_s']:.0f}/s" if unpaced
               else "moto tops out well below it")
    row("accepted → visible p99", "≤ 300 ms at 100 req/s",
        lambda: f"{paced['visible_ms']['p99']:.0f} ms at {paced['paced_rate']}/s ({ceiling}: "
                f"100/s cannot be offered here)",
        lambda: None, paced)
    return rows


def len_cold(s, case):
    """Cold starts behind a case's cold medians (5 before the runs were split)."""
    return s["invocations"][case].get("cold_starts", RUNS[run_of(s)]["probe"]["cold"])


def compare_lines(s):
    """This build beside the binaries of `--compare-binaries`, measured interleaved."""
    other = s.get("compare")
    if not other:
        return []
    mine, theirs = s.get("invocations") or {}, other.get("invocations") or {}
    name = other["binaries"]

    def spread(run):
        """The processes' own figures, lowest to highest: what the noise is."""
        each = run.get("cpu_ms_per_process")
        return f" ({min(each):.2f}–{max(each):.2f})" if each and len(each) > 1 else ""

    def change(a, b):
        return f"{(a - b) / b * 100:+.1f} %" if b else "—"

    rows = []
    for case in (c for c in mine if c in theirs):
        a, b = mine[case], theirs[case]
        cold_a, cold_b = a.get("cold") or {}, b.get("cold") or {}
        init = (f"{cold_a['init_ms']:.1f} / {cold_b['init_ms']:.1f} ms"
                if "init_ms" in cold_a and "init_ms" in cold_b else "—")
        rows.append(f"| {case} | {a['cpu_ms_per_invoke']:.3f} ms{spread(a)} | {b['cpu_ms_per_invoke']:.3f} ms{spread(b)} | "
                    f"{change(a['cpu_ms_per_invoke'], b['cpu_ms_per_invoke'])} | "
                    f"{a['p50_ms']:.1f} / {b['p50_ms']:.1f} ms | {init} | "
                    f"{a['peak_rss_mb']:.1f} / {b['peak_rss_mb']:.1f} MiB |")
    first = next(iter(mine.values()), {})
    return ["", f"This build beside `{name}` (`--compare-binaries`): the same probe cases, "
                f"{first.get('repeat', '?')} processes × {first.get('n', '?')} invocations of each, "
                "taken in turn (A B, B A) in the same stack run; medians, each process's own CPU figure "
                "in brackets: a change within their spread is noise.", "",
            f"| case | CPU per invocation, this build | CPU, `{name}` | change | warm p50 (this / `{name}`) "
            f"| init (this / `{name}`) | peak RSS (this / `{name}`) |",
            "|---|---|---|---|---|---|---|", *rows]


def event_lines(s):
    e = s.get("events")
    if not e:
        return []

    def ms(figures, q):
        value = (figures or {}).get(q)
        return "—" if value is None else f"{value:.0f}"

    late = e.get("accepted", 0) - e.get("events_received", e.get("accepted", 0))
    return [f"Change events at {e['rate_per_s']}/s ({e['accepted']} upserts, each a new user; "
            f"`dev/event_latency.py`): accepted → event at a sink p50 / p99 "
            f"{ms(e.get('event_ms'), 'p50')} / {ms(e.get('event_ms'), 'p99')} ms, beside accepted → visible "
            f"through GET {ms(e.get('visible_ms'), 'p50')} / {ms(e.get('visible_ms'), 'p99')} ms"
            + (f"; **{late} events did not arrive within 30 s**." if late else ".")]


def run_line(s):
    """Which run the table came from."""
    minutes = f", {s['wall_s'] / 60:.1f} min" if s.get("wall_s") else ""
    if run_of(s) == "quick":
        what = (f"`make bench`, the quick run{minutes}; rows it does not measure say so, "
                "`make bench-full` measures every one")
    else:
        what = f"`make bench-full`, every figure{minutes}"
    return f"Run of {s['date']} ({what}; {s['machine']})."


def table(s):
    status = {True: "met", False: "**over**", None: "not measurable locally"}
    rows = [f"| {what} | {limit} | {measured} | {status.get(ok, ok)} |" for what, limit, measured, ok in budgets(s)]
    load_rows = [
        f"| {r['name']} ({r['clients']} clients, {r['requests']} requests) | {r['accepted_per_s']:.1f} | "
        f"{r['post_ms']['p50']:.1f} / {r['post_ms']['p99']:.1f} ms | "
        f"{r['visible_ms']['p50']:.0f} / {r['visible_ms']['p99']:.0f} ms | "
        f"{r['emulator_raw_put_send_per_s']:.1f}/s | "
        f"{'(paced)' if r['paced_rate'] else format(r['throughput_ratio'], '.2f')} |" for r in s.get("load") or []]
    loads = ["| load run | accepted/s | POST p50 / p99 | accepted → visible p50 / p99 | emulator raw rate | ratio |",
             "|---|---|---|---|---|---|", *load_rows, ""] if load_rows else []
    c = s.get("criterion")
    others = []
    if c:
        parts = ", ".join(f"{k} {v} µs" for k, v in (c.get("parts_1kb_us") or {}).items())
        others = [f"Other criterion medians{' (quick: 1 s warm-up, 2 s measured per bench)' if run_of(s) == 'quick' else ''}: "
                  f"32 KB body {c.get('hot_path_32kb_us', '—')} µs, auth header parse + key hash "
                  f"{c.get('auth_us', '—')} µs, consumer parse + merge of a batch of 10 "
                  f"{c.get('consumer_batch_of_10_us', '—')} µs" + (f"; 1 KB parts: {parts}." if parts else ".")]
    events = event_lines(s)
    return "\n".join([
        run_line(s), "",
        "| budget | limit | measured | status |", "|---|---|---|---|", *rows,
        *compare_lines(s), "",
        *loads,
        *events, *([""] if events else []),
        *others,
    ]).rstrip("\n")


def write_summary(summary):
    summary["budgets"] = [dict(zip(("budget", "limit", "measured", "met"), b)) for b in budgets(summary)]
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = table(summary)
    print(text)
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def binaries_dir(value):
    """A directory with the `api` and `consumer` binaries to compare with."""
    path = Path(value).resolve()
    missing = [f for f in ("api", "consumer") if not os.access(path / f, os.X_OK)]
    if missing:
        raise argparse.ArgumentTypeError(f"{value}: no executable {' or '.join(missing)} in it")
    if path == (ROOT / "target" / "release").resolve():
        raise argparse.ArgumentTypeError(f"{value} holds this build: copy the binaries to compare elsewhere first")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every figure (make bench-full); default: the quick run")
    parser.add_argument("--compare-binaries", type=binaries_dir, metavar="DIR",
                        help="also probe DIR's api and consumer, interleaved with this build's")
    parser.add_argument("--doc-only", action="store_true",
                        help="only rewrite docs/performance.md and docs/cost.md from the last summary.json")
    args = parser.parse_args()
    if args.doc_only:
        summary = json.loads((OUT / "summary.json").read_text())
        write_summary(summary)
        cost.write_doc(summary)
        return
    mode = "full" if args.full else "quick"
    config = RUNS[mode]
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"date": time.strftime("%Y-%m-%d"), "run": mode,
               "machine": f"{os.cpu_count()} cores, {os.uname().machine}"}
    log(f"{config['make']}: criterion")
    summary["criterion"] = criterion(config["criterion"])
    if config["instructions"]:
        log("instruction count")
        summary["instructions_1kb"] = instructions()
    if config["arm64"]:
        log("arm64 binaries")
        summary["arm64_bytes"] = arm64_sizes()
    # The load generator; the stack builds the functions itself, with its own command
    # (a `--workspace` build of them here would unify other features: a second fat-LTO
    # build of the same binaries after every change).
    run("cargo", "build", "--quiet", "--release", "-p", "vibefollow-bench", "--bin", "load")
    summary.update(load(config, args.compare_binaries))
    summary["wall_s"] = round(time.monotonic() - STARTED)
    write_summary(summary)
    cost.write_doc(summary)
    log(f"{config['make']} took {summary['wall_s'] / 60:.1f} min; written: {OUT / 'summary.json'}, "
        f"{DOC.relative_to(ROOT)} and docs/cost.md")


if __name__ == "__main__":
    main()
