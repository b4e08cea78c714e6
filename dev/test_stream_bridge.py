"""The stream bridge's delivery rules, with a fake changes function: records before a
reported failure are done, a record that keeps failing is bisected down to itself and
handed to the failure queue, and every other record is handled, in order."""
import unittest

import stack


class FakeChanges:
    """Handles records in order and stops at the first poison one, as the changes
    function does; `crash` makes whole invocations fail first."""

    def __init__(self, poison=(), crashes=0):
        self.poison, self.crashes, self.handled, self.calls = set(poison), crashes, [], 0

    def __call__(self, records):
        self.calls += 1
        if self.crashes:
            self.crashes -= 1
            return 0
        for index, record in enumerate(records):
            if record in self.poison:
                return index
            self.handled.append(record)
        return None


class Deliver(unittest.TestCase):
    def run_batch(self, changes, records):
        failed = []
        stack.deliver(changes, records, failed.append, retries_allowed=2)
        return failed

    def test_a_clean_batch_is_one_invocation(self):
        changes = FakeChanges()
        self.assertEqual(self.run_batch(changes, list(range(10))), [])
        self.assertEqual((changes.handled, changes.calls), (list(range(10)), 1))

    def test_a_poison_record_alone_reaches_the_failure_queue_and_the_rest_is_handled(self):
        changes = FakeChanges(poison={6})
        self.assertEqual(self.run_batch(changes, list(range(10))), [[6]])
        self.assertEqual(changes.handled, [0, 1, 2, 3, 4, 5, 7, 8, 9])

    def test_a_transient_failure_is_retried_without_loss(self):
        changes = FakeChanges(crashes=2)
        self.assertEqual(self.run_batch(changes, list(range(5))), [])
        self.assertEqual(changes.handled, list(range(5)))



class StreamRecord(unittest.TestCase):
    def test_binary_attributes_travel_base64_encoded_as_in_lambdas_event(self):
        from stack.bridges import stream_record
        record = {"eventID": "1", "eventName": "MODIFY", "dynamodb": {
            "Keys": {"pk": {"S": "ws#u1"}},
            "NewImage": {"pk": {"S": "ws#u1"}, "profile": {"B": b"\x02\xff"},
                         "nested": {"M": {"l": {"L": [{"B": b"a"}, {"BS": [b"b"]}, {"N": "1"}]}}}},
            "SequenceNumber": "5"}}
        event = stream_record(record, "arn:stream")
        image = event["dynamodb"]["NewImage"]
        self.assertEqual(image["profile"], {"B": "Av8="})
        self.assertEqual(image["nested"], {"M": {"l": {"L": [{"B": "YQ=="}, {"BS": ["Yg=="]}, {"N": "1"}]}}})
        self.assertEqual(event["dynamodb"]["Keys"], {"pk": {"S": "ws#u1"}})


if __name__ == "__main__":
    unittest.main()
