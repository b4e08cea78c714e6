"""template.yaml's operational guarantees, read as the local stack reads it (no SAM, no
cargo: `make test` runs these with the dev tools; tests/stack/template.rs checks the
template against the Rust code's names and constants):

- every queue-driven function is bounded by default: each SQS event source mapping has a
  `ScalingConfig.MaximumConcurrency` (Lambda's lowest is 2), a parameter's default and
  lowest value included;
- the audiences tick, delivered by EventBridge, has a retry policy no longer than a tick
  and a dead-letter queue that only its rule may send to;
- every dead-letter queue has its alarm, a runbook section for that alarm and a stack
  output with its URL, and every queue refuses requests without TLS;
- no function sends Lambda's platform log lines (system log level WARN)."""
import re
import unittest

from stack.settings import ROOT
from stack.template import load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]


def of_type(kind):
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


def ref(value):
    """The resource or parameter a `!Ref` / `!GetAtt` names, else None."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return value["Fn::GetAtt"][0]
    return None


def events(kind):
    return {(function, event): spec["Properties"]
            for function, resource in of_type("AWS::Serverless::Function").items()
            for event, spec in resource["Properties"].get("Events", {}).items() if spec["Type"] == kind}


class Logging(unittest.TestCase):
    def test_no_function_sends_lambdas_platform_lines(self):
        # System log level WARN: no platform.start/report line per invocation (~450 B of
        # CloudWatch Logs each); dev/cost.py counts none for this project.
        logging = TEMPLATE["Globals"]["Function"]["LoggingConfig"]
        self.assertEqual((logging["LogFormat"], logging["SystemLogLevel"]), ("JSON", "WARN"))
        for name, function in of_type("AWS::Serverless::Function").items():
            with self.subTest(function=name):
                self.assertNotIn("SystemLogLevel", function["Properties"].get("LoggingConfig", {}))
                self.assertNotIn("LogFormat", function["Properties"].get("LoggingConfig", {}))


class ConcurrencyBounds(unittest.TestCase):
    def test_every_queue_mapping_runs_a_bounded_number_of_batches_by_default(self):
        mappings = events("SQS")
        self.assertEqual(len(mappings), 7, sorted(mappings))
        for (function, event), properties in mappings.items():
            with self.subTest(function=function, event=event):
                bound = properties.get("ScalingConfig", {}).get("MaximumConcurrency")
                self.assertIsNotNone(bound, "no ScalingConfig.MaximumConcurrency: a backlog scales "
                                            "the function to the account's whole concurrency")
                if isinstance(bound, int):
                    lowest = highest = bound
                else:
                    parameter = PARAMETERS[ref(bound)]
                    self.assertIn("Description", parameter)
                    lowest, highest = parameter["MinValue"], parameter["MaxValue"]
                    self.assertTrue(lowest <= parameter["Default"] <= highest)
                self.assertGreaterEqual(lowest, 2, "Lambda's lowest MaximumConcurrency is 2")
                self.assertLessEqual(highest, 1000, "Lambda's highest MaximumConcurrency is 1,000")

    def test_an_optional_reservation_never_defaults_below_the_mappings_bound(self):
        # A reservation below the bound would throttle batches the mapping hands over,
        # each throttle a receive on the way to the dead-letter queue: -1 (none) or more.
        for function, parameter in (("ConsumerFunction", "ConsumerReservedConcurrency"),
                                    ("AudiencesFunction", "AudiencesReservedConcurrency")):
            with self.subTest(function=function):
                reserved = RESOURCES[function]["Properties"]["ReservedConcurrentExecutions"]
                self.assertEqual(reserved["Fn::If"][1], {"Ref": parameter})
                self.assertEqual((PARAMETERS[parameter]["Default"], PARAMETERS[parameter]["MinValue"]), (-1, -1))


class Tick(unittest.TestCase):
    def setUp(self):
        [(self.key, self.tick)] = events("Schedule").items()

    def test_the_tick_is_retried_no_longer_than_a_tick_then_dead_lettered(self):
        self.assertEqual(self.key, ("AudiencesFunction", "Tick"))
        tick_seconds = int(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["AUDIENCE_TICK_SECONDS"])
        self.assertEqual(self.tick["Schedule"], "rate(1 minute)")
        retry = self.tick["RetryPolicy"]
        # EventBridge's lowest event age is 60 s: a retried tick never outlives the next.
        self.assertTrue(60 <= retry["MaximumEventAgeInSeconds"] <= tick_seconds, retry)
        self.assertTrue(1 <= retry["MaximumRetryAttempts"] <= 185, retry)
        self.assertEqual(self.tick["DeadLetterConfig"], {"Arn": {"Fn::GetAtt": ["AudienceTickDeadLetterQueue", "Arn"]}})

    def test_only_the_tick_rule_may_send_to_its_dead_letter_queue(self):
        # SAM names the rule it makes of a Schedule event <function><event>.
        rule = "".join(self.key)
        [policy] = [p["Properties"] for p in of_type("AWS::SQS::QueuePolicy").values()
                    if {"Ref": "AudienceTickDeadLetterQueue"} in p["Properties"]["Queues"]]
        self.assertEqual(policy["Queues"], [{"Ref": "AudienceTickDeadLetterQueue"}])
        [allow] = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
        self.assertEqual((allow["Principal"], allow["Action"]), ({"Service": "events.amazonaws.com"}, "sqs:SendMessage"))
        self.assertEqual(allow["Condition"], {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule, "Arn"]}}})


class DeadLetterQueues(unittest.TestCase):
    """Every queue a failure ends in: the dead-letter queues, the parked users, the
    changes function's failure destination."""
    QUEUES = sorted([q for q in of_type("AWS::SQS::Queue") if q.endswith("DeadLetterQueue")]
                    + ["AudienceParkedQueue", "ChangesFailureQueue"])

    def alarms(self):
        """Queue → the alarms on its visible messages."""
        found = {}
        for name, alarm in of_type("AWS::CloudWatch::Alarm").items():
            properties = alarm["Properties"]
            for dimension in properties.get("Dimensions", []):
                if properties.get("MetricName") == "ApproximateNumberOfMessagesVisible" \
                        and dimension["Name"] == "QueueName":
                    found.setdefault(ref(dimension["Value"]), []).append(name)
        return found

    def test_the_ticks_dead_letter_queue_is_one_of_them(self):
        self.assertIn("AudienceTickDeadLetterQueue", self.QUEUES)
        self.assertEqual(RESOURCES["AudienceTickDeadLetterQueue"]["Properties"]["QueueName"],
                         {"Fn::Sub": "${AWS::StackName}-audience-ticks-dlq"})

    def test_each_has_an_alarm_on_its_first_message_and_a_stack_output(self):
        alarms, outputs = self.alarms(), {ref(o["Value"]) for o in TEMPLATE["Outputs"].values()}
        for queue in self.QUEUES:
            with self.subTest(queue=queue):
                [alarm] = alarms.get(queue, [None])
                self.assertIsNotNone(alarm, "no alarm")
                properties = RESOURCES[alarm]["Properties"]
                self.assertEqual((properties["Threshold"], properties["ComparisonOperator"]), (0, "GreaterThanThreshold"))
                self.assertIn(queue, outputs, "no stack output names it")

    def test_every_alarm_has_its_runbook_section_and_row(self):
        runbooks = (ROOT / "docs" / "runbooks.md").read_text()
        sections = set(re.findall(r"^## (\w+)$", runbooks, re.M))
        rows = set(re.findall(r"^\| \[`(\w+)`\]\(#(\w+)\)", runbooks, re.M))
        for alarm, declared in of_type("AWS::CloudWatch::Alarm").items():
            with self.subTest(alarm=alarm):
                self.assertIn(alarm, sections)
                self.assertIn((alarm, alarm.lower()), rows)
                self.assertIn(f"docs/runbooks.md ({alarm})", declared["Properties"]["AlarmDescription"])

    def test_every_queue_refuses_requests_without_tls(self):
        covered = {}
        for policy in of_type("AWS::SQS::QueuePolicy").values():
            statements = policy["Properties"]["PolicyDocument"]["Statement"]
            if any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in statements):
                for queue in policy["Properties"]["Queues"]:
                    covered[ref(queue)] = covered.get(ref(queue), 0) + 1
        # One policy a queue: SQS keeps only the last one set.
        self.assertEqual(covered, {queue: 1 for queue in of_type("AWS::SQS::Queue")})


if __name__ == "__main__":
    unittest.main()
