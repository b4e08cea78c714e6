"""`make drill`'s webhook oracle (dev/drill/webhooks.py): what an endpoint received
against the events expected (missing, unexpected, repeats, order per user), the attempts
on a disabled endpoint after it was disabled, and the flaky endpoint's script."""
import unittest

from drill.webhooks import (MOST_TIMEOUTS, Endpoint, Webhooks, attempts_after, delivery_figures, told_at,
                            told_of_gone)


class Received:
    """An endpoint's record of requests, without a listener."""

    def __init__(self, received):
        self.received = received

    def delivered(self):
        return [r for r in self.received if r["status"] == 200]


def change(message, user, sequence, version, status=200, timestamp=0):
    return {"id": message, "status": status, "verified": True, "timestamp": timestamp,
            "body": {"type": "user.changed", "sequence": sequence,
                     "data": {"external_user_id": user, "version": version}}}


class DeliveryFigures(unittest.TestCase):
    def test_every_expected_event_once_after_dedup_in_order_per_user(self):
        endpoint = Received([change("m1", "u1", 1, 10, status=503), change("m1", "u1", 1, 10),
                             change("m2", "u2", 2, 5), change("m3", "u1", 3, 11), change("m1", "u1", 1, 10)])
        figures = delivery_figures(endpoint, {"m1": {}, "m2": {}, "m3": {}})
        self.assertEqual(figures, {"delivered": 3, "missing": 0, "unexpected": 0, "repeats": 1,
                                   "attempts": 5, "refused_or_timed_out": 1, "out_of_sequence": 0,
                                   "late": 0, "late_examples": []})

    def test_missing_unexpected_and_out_of_order_are_counted(self):
        endpoint = Received([change("m3", "u1", 3, 11), change("m1", "u1", 1, 10),
                             change("m9", "u2", 4, 1), change("m4", "u1", 5, 9)])
        figures = delivery_figures(endpoint, {"m1": {}, "m2": {}, "m3": {}, "m4": {}})
        self.assertEqual((figures["missing"], figures["unexpected"], figures["out_of_sequence"], figures["late"]),
                         (1, 1, 1, 2), "m1 after m3 (sequence and version), m4 after m3 (version)")


class Disabled(unittest.TestCase):
    def test_only_attempts_started_in_a_second_after_the_others_were_told_count(self):
        endpoint = Received([change("m1", "u1", 1, 1, status=410, timestamp=1_800_000_000),
                             change("m2", "u2", 2, 1, timestamp=1_800_000_000),
                             change("m3", "u2", 3, 2, timestamp=1_800_000_001)])
        self.assertEqual(attempts_after(endpoint, 1_800_000_000.4), 1)
        self.assertEqual(attempts_after(endpoint, None), 0)
        told = {"id": "msg_disabled_gone_1", "status": 200, "received_at": 1_800_000_000.4, "body": {
            "type": "webhook.disabled", "data": {"webhook_id": "gone"}}}
        later = dict(told, received_at=1_800_000_002.0)
        self.assertEqual(told_at(Received([change("m1", "u1", 1, 1), later, told])), 1_800_000_000.4)
        self.assertIsNone(told_at(Received([change("m1", "u1", 1, 1)])))

    def test_the_others_are_told_once_whatever_the_repeats(self):
        told = {"id": "msg_disabled_gone_1", "status": 200, "body": {
            "type": "webhook.disabled", "data": {"webhook_id": "gone"}}}
        self.assertEqual(told_of_gone(Received([told, told, change("m1", "u1", 1, 1)])), 1)
        self.assertEqual(told_of_gone(Received([change("m1", "u1", 1, 1)])), 0)


class Scripts(unittest.TestCase):
    def test_flaky_refuses_at_most_three_times_and_times_out_for_two_messages_only(self):
        hooks = Webhooks()
        try:
            flaky = hooks.endpoints["flaky"].script
            answers = {f"msg_{n}": [flaky(f"msg_{n}", attempt) for attempt in range(5)] for n in range(200)}
            self.assertTrue(all(a[3:] == [200, 200] for a in answers.values()))
            self.assertEqual(sum("timeout" in a for a in answers.values()), MOST_TIMEOUTS)
            self.assertTrue(any(a[0] == 429 for a in answers.values()))
            gone = hooks.endpoints["gone"].script
            self.assertEqual([gone("m", 0) for _ in range(7)], [200] * 5 + [410] * 2)
        finally:
            for endpoint in hooks.endpoints.values():
                endpoint.server.shutdown()

    def test_an_endpoint_records_what_it_answered_and_whether_it_verified(self):
        endpoint = Endpoint("x", lambda _m, _a: 429)
        try:
            answered = endpoint.answer("/", {"webhook-id": "msg_1", "webhook-timestamp": "1"}, '{"type":"t"}')
            self.assertEqual(answered, (429, {"Retry-After": "1"}))
            received = [{k: v for k, v in r.items() if k != "received_at"} for r in endpoint.received]
            self.assertEqual(received, [{"id": "msg_1", "timestamp": 1, "body": {"type": "t"},
                                         "verified": False, "status": 429}])
        finally:
            endpoint.server.shutdown()


if __name__ == "__main__":
    unittest.main()
