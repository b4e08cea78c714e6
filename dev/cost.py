#!/usr/bin/env python3
"""Cost per million upserts on AWS, from the summary of `make bench` (the quick run) or
`make bench-full`.

    cost.py [target/bench/summary.json]      prints the table and rewrites docs/cost.md

A summary without the figures the table needs (CPU of api-keyed and consumer, their log
bytes, the capacity units of the `update` workload) leaves docs/cost.md as it is and
says what is missing.

Measured inputs (summary.json): CPU per invocation of each function, the bytes each logs
per invocation, and the DynamoDB capacity units per upsert counted by the local stack's
proxy. Everything else is a price or an assumption, named below; change them here.
"""
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invocation_probe import BATCH_USERS  # noqa: E402  users per call of the batch route, as probed

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cost.md"
BEGIN, END = "<!-- cost:begin -->", "<!-- cost:end -->"

# us-east-1 list prices (USD) as published on the AWS pricing pages, read 2026-11-28.
PRICES_DATE = "2026-11-28"
HTTP_API_PER_M = 1.00             # API Gateway HTTP API, first 300 M requests a month
LAMBDA_REQUEST_PER_M = 0.20
LAMBDA_ARM64_GB_S = 0.0000133334   # arm64, first 7.5 G GB-s a month
LAMBDA_X86_GB_S = 0.0000166667
DYNAMODB_WRITE_PER_M = 0.625       # on-demand write request units, Standard table class
DYNAMODB_READ_PER_M = 0.125
SQS_REQUEST_PER_M = 0.40           # standard queue, per 64 KB chunk of a request
EVENTBRIDGE_EVENT_PER_M = 1.00     # custom events, per 64 KB chunk
LOGS_INGEST_PER_GB = 0.50          # CloudWatch Logs, standard class
XRAY_TRACE_PER_M = 5.00            # traces recorded

# Assumptions.
MEMORY_MB = 128                    # template.yaml Globals: MemorySize
FULL_VCPU_MB = 1769                # Lambda gives a whole vCPU at 1,769 MB, a share below
CALL_MS = {"dynamodb": 5.0, "sqs": 8.0, "eventbridge": 15.0}  # in-region latency of one call
PLATFORM_LOG_BYTES = 450           # Lambda's platform.start/report lines per invocation (JSON),
                                   # sent at the default system log level (INFO), as the
                                   # Powertools column's stack would; template.yaml sets WARN
                                   # for every function (dev/test_template.py), which sends
                                   # neither: none are counted for this project
CONSUMER_BATCH = 10                # template.yaml ConsumerBatchSize
SQS_BATCH = 10                     # SendMessageBatch's entries per call (one 64 KB chunk here)
CHANGES_BATCH = 10                 # stream records per changes invocation at a modest rate
CHANGES_CPU_MS = 1.2               # changes CPU per 10 records (docs/performance.md; not probed)
XRAY_SAMPLED = 0.05                # X-Ray's default rule: 1 request/s, then 5 %
POWERTOOLS = {                     # the Python + Powertools implementation, same harness
    "api-keyed": 9.32, "api-unkeyed": 5.40, "consumer": 27.7, "log_bytes": 700,
}


def units_per_upsert(capacity):
    """{workload: {"write", "read", "tables": {table: write units}}} per upsert."""
    result = {}
    for workload, run in capacity.items():
        n = run["upserts"]
        tables = {}
        for table, units in run["tables"].items():
            tables[table] = units["write"] / n
            for index, index_units in units["indexes"].items():
                tables[f"{table} / {index}"] = index_units / n
        result[workload] = {"write": sum(tables.values()), "tables": tables,
                            "read": sum(u["read"] for u in run["tables"].values()) / n,
                            "item_bytes": run["item_bytes"]}
    return result


def billed_ms(cpu_ms, calls):
    """Lambda bills wall time in 1 ms steps: CPU at this memory's share of a vCPU, plus
    the AWS calls it waits for one after another."""
    return math.ceil(cpu_ms * FULL_VCPU_MB / MEMORY_MB + sum(CALL_MS[c] for c in calls))


def lambda_cost(ms, per_upsert=1.0, gb_s=LAMBDA_ARM64_GB_S):
    per_invocation = ms / 1000 * MEMORY_MB / 1024 * gb_s * 1e6 + LAMBDA_REQUEST_PER_M
    return per_invocation * per_upsert


def lines(cpu, log_bytes, units, gb_s=LAMBDA_ARM64_GB_S, case="api-keyed", workload="update", users=1):
    """(what, per million upserts in USD, how) rows for one implementation: upserts sent
    `users` per keyed call (1: `POST /api/v1/users`; more: the batch route, sent with
    SendMessageBatch), the api's CPU per call from the probe's `case`, the capacity units
    per upsert from `workload`."""
    api_ms = billed_ms(cpu[case], ["dynamodb", "sqs", "dynamodb"])
    consumer_ms = billed_ms(cpu["consumer"], ["dynamodb", "dynamodb"])
    changes_ms = billed_ms(CHANGES_CPU_MS, ["eventbridge"])
    measured = units[workload]
    logs_gb = log_bytes * 1e6 / 1024 ** 3
    per_call, alone = 1 / users, users == 1
    sends, send = (1, "SendMessage") if alone else (1 / SQS_BATCH, f"SendMessageBatch of {SQS_BATCH}")
    return [
        ("API Gateway HTTP API", HTTP_API_PER_M * per_call, "1 request" if alone else f"1 request per {users} users"),
        ("Lambda api", lambda_cost(api_ms, per_call, gb_s),
         f"{api_ms} ms billed at {MEMORY_MB} MB{'' if alone else ' per call'} ({cpu[case]:.2f} ms CPU + claim, "
         f"{'send' if alone else 'sends at once'}, mark)"),
        ("Lambda consumer", lambda_cost(consumer_ms, 1 / CONSUMER_BATCH, gb_s),
         f"{consumer_ms} ms per batch of {CONSUMER_BATCH} ({cpu['consumer']:.2f} ms CPU + read, write)"),
        ("Lambda changes", lambda_cost(changes_ms, 1 / CHANGES_BATCH, gb_s),
         f"{changes_ms} ms per {CHANGES_BATCH} stream records ({CHANGES_CPU_MS} ms CPU + PutEvents)"),
        ("DynamoDB writes", measured["write"] * DYNAMODB_WRITE_PER_M, f"{measured['write']:.2f} write units"),
        ("DynamoDB reads", measured["read"] * DYNAMODB_READ_PER_M, f"{measured['read']:.2f} read units"),
        ("SQS", (sends + 2 / CONSUMER_BATCH) * SQS_REQUEST_PER_M,
         f"{send} + a receive and a delete per {CONSUMER_BATCH}"),
        ("EventBridge", EVENTBRIDGE_EVENT_PER_M, "1 change event"),
        ("CloudWatch Logs", logs_gb * LOGS_INGEST_PER_GB, f"{log_bytes:.0f} B ingested"),
        ("X-Ray", XRAY_SAMPLED * XRAY_TRACE_PER_M * per_call, f"{XRAY_SAMPLED:.0%} of requests traced"),
    ]


def log_bytes(summary, case="api-keyed", users=1):
    """Bytes the functions log per upsert: the api's per call of `case` (`users` per
    call), the consumer's per batch."""
    inv = summary["invocations"]
    return inv[case]["log_bytes_per_invoke"] / users + inv["consumer"]["log_bytes_per_invoke"] / CONSUMER_BATCH


def source(summary):
    """Which run the figures came from (a summary from before the split was a full run)."""
    if summary.get("run", "full") == "quick":
        return "`make bench` (the quick run)"
    return "`make bench-full`"


def missing(summary):
    """The inputs of the table that `summary` lacks, named."""
    invocations = summary.get("invocations") or {}
    gone = [f"{case} CPU and log bytes" for case in ("api-keyed", "consumer")
            if not {"cpu_ms_per_invoke", "log_bytes_per_invoke"} <= (invocations.get(case) or {}).keys()]
    if "update" not in (summary.get("capacity") or {}):
        gone.append("capacity units (update)")
    return gone


def table(summary):
    cpu = {case: run["cpu_ms_per_invoke"] for case, run in summary["invocations"].items()}
    units = units_per_upsert(summary["capacity"])
    ours = lines(cpu, log_bytes(summary), units)
    theirs = lines(POWERTOOLS, POWERTOOLS["log_bytes"] + PLATFORM_LOG_BYTES * (1 + 1 / CONSUMER_BATCH + 1 / CHANGES_BATCH),
                   units, LAMBDA_X86_GB_S)
    rows = [f"| {what} | ${a:.3f} | {how} | ${b:.3f} | {how_b} |"
            for (what, a, how), (_, b, how_b) in zip(ours, theirs)]
    total_a, total_b = sum(r[1] for r in ours), sum(r[1] for r in theirs)
    unit_rows = [f"| {workload} | {u['item_bytes']:,} B | {u['write']:.2f} | {u['read']:.2f} | "
                 + ", ".join(f"{t} {v:.2f}" for t, v in u["tables"].items()) + " |"
                 for workload, u in units.items()]
    return "\n".join([
        f"From {source(summary)} of {summary['date']}; prices of {PRICES_DATE} (us-east-1).", "",
        "| line | this project | how | Python + Powertools | how |", "|---|---|---|---|---|", *rows,
        f"| **total per million keyed upserts** | **${total_a:.2f}** | | **${total_b:.2f}** | |", "",
        "DynamoDB capacity units per keyed upsert, counted by the local stack's proxy (api and consumer):", "",
        "| workload | users item | write units | read units | write units by table |", "|---|---|---|---|---|",
        *unit_rows, *batch_table(summary, cpu, units),
    ])


def batch_table(summary, cpu, units):
    """The batch route's cost per million users, when the run measured it."""
    if "api-batch" not in cpu or "batch" not in units:
        return []
    rows = lines(cpu, log_bytes(summary, "api-batch", BATCH_USERS), units,
                 case="api-batch", workload="batch", users=BATCH_USERS)
    return ["", f"`POST /api/v1/users/batch`, {BATCH_USERS} updates per keyed call (the `batch` workload):", "",
            "| line | per million users | how |", "|---|---|---|",
            *(f"| {what} | ${cost:.3f} | {how} |" for what, cost, how in rows),
            f"| **total per million users** | **${sum(r[1] for r in rows):.2f}** | |"]


def write_doc(summary):
    """Rewrites the table of docs/cost.md, unless the summary lacks its inputs."""
    gone = missing(summary)
    if gone:
        note = f"cost.py: docs/cost.md left as it was: this summary has no {', '.join(gone)}"
        print(note, file=sys.stderr)
        return note
    text = table(summary)
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    return text


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "bench" / "summary.json"
    print(write_doc(json.loads(path.read_text())))
