"""The bench's table and the cost table from summaries of each kind of run: full, quick
(no arm64 sizes, no instruction count, two load runs), with `--compare-binaries`, and
one that lacks nearly everything. Nothing runs; no file is written."""
import copy
import io
import unittest
from contextlib import redirect_stderr

import bench
import cost


def probe(cpu, p50, log_bytes=520.0, repeat=3, n=300, cold=5):
    return {"init_ms": 13.0, "first_invoke_ms": p50 * 0.75, "cpu_ms_per_invoke": cpu, "p50_ms": p50,
            "p90_ms": p50 * 1.2, "p99_ms": p50 * 2, "peak_rss_mb": 9.0, "log_bytes_per_invoke": log_bytes,
            "case": "x", "n": n, "repeat": repeat, "cold_starts": cold,
            "cold": {"init_ms": 13.8, "first_invoke_ms": p50 * 0.75, "cold_cpu_ms": 9.0, "peak_rss_mb": 8.0}}


def load_run(name, rate, ratio=None):
    return {"name": name, "clients": 8, "requests": 400, "paced_rate": rate, "accepted_per_s": 20.0,
            "post_ms": {"p50": 12.0, "p99": 26.4}, "visible_ms": {"p50": 15, "p99": 50},
            "emulator_raw_put_send_per_s": 86.1, "throughput_ratio": ratio}


def capacity(write_units, upserts=40):
    return {"upserts": upserts, "item_bytes": 1500,
            "tables": {"users": {"write": write_units * upserts, "read": upserts, "indexes": {}}}}


FULL = {
    "date": "2026-12-03", "run": "full", "machine": "2 cores, x86_64", "wall_s": 1500,
    "criterion": {"hot_path_1kb_us": 5.17, "hot_path_32kb_us": 105.4, "auth_us": 0.15,
                  "consumer_batch_of_10_us": 20.97,
                  "parts_1kb_us": {"JSON parse only": 1.28, "canonical hash only": 1.18}},
    "instructions_1kb": 169639,
    "arm64_bytes": {"api": 7017144, "consumer": 6099032},
    "load": [load_run("paced 20/s", 20), load_run("paced 40/s", 40), load_run("unpaced", 0, 0.58)],
    "peak_rss_kb": {"api": 9216, "consumer": 9216},
    "events": {"rate_per_s": 20, "accepted": 400, "events_received": 400,
               "event_ms": {"p50": 152, "p99": 369}, "visible_ms": {"p50": 28, "p99": 218}},
    "invocations": {"api-keyed": probe(1.5, 25.7), "api-unkeyed": probe(0.94, 18.2),
                    "api-replay": probe(0.63, 4.0), "consumer": probe(3.16, 30.0, 900.0)},
    "capacity": {"new": capacity(6.05), "update": capacity(5.05), "full profile": capacity(252.0, 10)},
}


def quick():
    s = copy.deepcopy(FULL)
    s.update(run="quick", wall_s=420)
    del s["arm64_bytes"], s["instructions_1kb"]
    s["load"] = [load_run("paced 20/s", 20), load_run("unpaced", 0, 0.6)]
    for run in s["invocations"].values():
        run.update(repeat=2, n=200, cold_starts=3)
    return s


def rows(summary):
    return {what.split(" (")[0]: (measured, ok) for what, _, measured, ok in bench.budgets(summary)}


class BenchTable(unittest.TestCase):
    def test_a_full_run_measures_every_row_and_says_so(self):
        text = bench.table(FULL)
        self.assertIn("`make bench-full`, every figure, 25.0 min", text)
        self.assertNotIn("not in the quick run", text)
        self.assertIn("169,639 instructions", text)
        self.assertIn("api 7,017,144 B, consumer 6,099,032 B", text)
        self.assertIn("median of 5 cold starts", text)
        self.assertEqual(rows(FULL)["stripped arm64 binaries"][1], True)

    def test_a_quick_run_marks_what_it_does_not_measure(self):
        s = quick()
        text = bench.table(s)
        self.assertIn("`make bench`, the quick run, 7.0 min", text)
        self.assertEqual(rows(s)["stripped arm64 binaries"], ("—", "not in the quick run (make bench-full)"))
        self.assertIn("callgrind count: not in the quick run (make bench-full)", text)
        self.assertIn("median of 3 cold starts", text)
        self.assertEqual(rows(s)["local throughput"][0].split()[0], "0.60")
        self.assertIn("| paced 20/s", text)
        self.assertNotIn("| paced 40/s", text)

    def test_a_summary_from_before_the_split_is_a_full_run(self):
        s = copy.deepcopy(FULL)
        del s["run"], s["wall_s"]
        for run in s["invocations"].values():
            del run["cold_starts"]
        text = bench.table(s)
        self.assertIn("(`make bench-full`, every figure; 2 cores", text)
        self.assertIn("median of 5 cold starts", text)

    def test_a_summary_missing_nearly_everything_still_makes_a_table(self):
        s = {"date": "2026-12-03", "run": "quick", "machine": "2 cores, x86_64"}
        text = bench.table(s)
        self.assertEqual(sum(ok == "not in the quick run (make bench-full)" for *_, ok in bench.budgets(s)), 11)
        self.assertNotIn("| load run |", text)
        s["run"] = "full"
        self.assertIn("not measured in this run", bench.table(s))

    def test_events_that_never_arrived_are_said(self):
        s = quick()
        s["events"].update(events_received=0, event_ms={"p50": None, "p99": None, "mean": None})
        self.assertIn("p50 / p99 — / — ms", bench.table(s))
        self.assertIn("400 events did not arrive", bench.table(s))

    def test_compared_binaries_stand_beside_this_build(self):
        s = quick()
        s["compare"] = {"binaries": "/tmp/before", "invocations": copy.deepcopy(s["invocations"])}
        s["compare"]["invocations"]["api-keyed"].update(cpu_ms_per_invoke=2.0, cpu_ms_per_process=[1.9, 2.1])
        text = bench.table(s)
        self.assertIn("This build beside `/tmp/before`", text)
        self.assertIn("| api-keyed | 1.500 ms | 2.000 ms (1.90–2.10) | -25.0 % |", text)
        self.assertIn("| consumer | 3.160 ms | 3.160 ms | +0.0 % |", text)
        self.assertEqual(rows(s)["api CPU per invocation, keyed"][0], "1.50 ms")


class CostTable(unittest.TestCase):
    def test_the_run_is_named(self):
        self.assertIn("From `make bench-full` of 2026-12-03", cost.table(FULL))
        self.assertIn("From `make bench` (the quick run) of 2026-12-03", cost.table(quick()))
        self.assertEqual(cost.missing(quick()), [])

    def test_the_batch_route_is_priced_per_user_when_measured(self):
        s = quick()
        self.assertNotIn("users/batch", cost.table(s))
        s["invocations"]["api-batch"] = probe(12.0, 60.0, 600.0)
        s["capacity"]["batch"] = capacity(1.04, 100)
        text = cost.table(s)
        self.assertIn("`POST /api/v1/users/batch`, 100 updates per keyed call", text)
        rows = {line.split(" | ")[0].strip("| "): line for line in text.split("users/batch")[1].splitlines()}
        # The call's costs shared by its 100 users; each user's write, event and queue share.
        self.assertIn("| $0.010 | 1 request per 100 users |", rows["API Gateway HTTP API"])
        self.assertIn("| $0.650 | 1.04 write units |", rows["DynamoDB writes"])
        self.assertIn("| $1.000 | 1 change event |", rows["EventBridge"])
        self.assertIn("| $0.120 | SendMessageBatch of 10", rows["SQS"])
        self.assertIn("**$2.01**", rows["**total per million users**"])

    def test_this_projects_logs_count_no_platform_lines(self):
        # template.yaml's system log level WARN sends no platform.start/report line.
        s = quick()
        self.assertEqual(cost.log_bytes(s), 520.0 + 900.0 / cost.CONSUMER_BATCH)

    def test_a_summary_without_its_inputs_leaves_the_doc_alone(self):
        s = quick()
        del s["capacity"], s["invocations"]["consumer"]
        with redirect_stderr(io.StringIO()):
            note = cost.write_doc(s)
        self.assertIn("left as it was", note)
        self.assertIn("consumer CPU and log bytes", note)
        self.assertIn("capacity units (update)", note)


if __name__ == "__main__":
    unittest.main()


class ProbeEnvironment(unittest.TestCase):
    def test_the_probe_passes_every_variable_the_functions_read(self):
        import invocation_probe
        names = invocation_probe.config_variables()
        self.assertIn("AUDIENCE_RETRY_QUEUE_URL", names)
        self.assertIn("USERS_TABLE", names)
        self.assertTrue(set(names) <= set(invocation_probe.FUNCTION_VARIABLES))
