"""dev/webhook_latency.py's bookkeeping, without a stack: deliveries verified with the
specification's library as a receiver would, repeats and refusals counted apart, and
latency only for users both accepted and received."""
import datetime
import json
import unittest
from unittest import mock

from standardwebhooks.webhooks import Webhook

import webhook_latency

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def delivery(user, secret=SECRET, msg_id="msg_1"):
    body = json.dumps({"type": "user.changed", "data": {"external_user_id": user}})
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(msg_id, now, body)}
    return headers, body


class Receipts(unittest.TestCase):
    def test_a_verified_delivery_counts_once_and_a_forged_one_never(self):
        receipts = webhook_latency.Receipts(SECRET)
        with mock.patch("time.monotonic", return_value=10.0):
            receipts.take(*delivery("u1"))
        with mock.patch("time.monotonic", return_value=11.0):
            receipts.take(*delivery("u1"))
            receipts.take(*delivery("u2", secret="whsec_" + "A" * 32))
        self.assertEqual(receipts.first, {"u1": 10.0}, "the first receipt is the one timed")
        self.assertEqual((receipts.repeats, receipts.refused), (1, 1))

    def test_latency_is_from_acceptance_to_first_receipt_of_the_users_received(self):
        receipts = webhook_latency.Receipts(SECRET)
        receipts.first = {"u1": 10.3, "u2": 10.9}
        result = webhook_latency.summary({"u1": 10.0, "u2": 10.5, "u3": 10.6}, receipts)
        self.assertEqual((result["accepted"], result["received"]), (3, 2))
        self.assertAlmostEqual(result["received_ms"]["max"], 400.0)
        self.assertAlmostEqual(result["received_ms"]["p50"], 400.0)


if __name__ == "__main__":
    unittest.main()
