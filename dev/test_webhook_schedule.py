"""dev/webhook_schedule.py's judgement, without a stack: each wait against the schedule
÷ the factor (whole seconds rounded up, jittered), the disabling against 5 days ÷ the
factor, and nothing reaching the endpoint after it."""
import unittest

import webhook_schedule

FACTOR = 3600.0


def requests(flaky, ops=()):
    """`Requests` holding these (time, webhook-id) attempts to /flaky and (time, body) to /ops."""
    held = webhook_schedule.Requests()
    held.by_path["/flaky"] = [(t, message, {}) for t, message in flaky]
    held.by_path["/ops"] = [(t, "msg_d", body) for t, body in ops]
    return held


def on_schedule(start=100.0, waits=(1, 1, 1, 2, 5, 10, 10)):
    times, t = [start], start
    for wait in waits:
        t += wait + 0.3
        times.append(t)
    return [(t, "msg_1") for t in times]


DISABLED = {"type": "webhook.disabled", "data": {"reason": "failing"}}


class Schedule(unittest.TestCase):
    def test_short_steps_round_up_to_a_second_and_long_ones_keep_their_jitter(self):
        self.assertEqual(webhook_schedule.expected_wait_s(0, FACTOR), (1, 1))
        self.assertEqual(webhook_schedule.expected_wait_s(3, FACTOR), (2, 3))
        self.assertEqual(webhook_schedule.expected_wait_s(6, FACTOR), (8, 12))
        self.assertEqual(webhook_schedule.expected_wait_s(6, 1.0), (28800, 43200))

    def test_a_message_on_schedule_and_a_disabling_in_time_pass(self):
        held = requests(on_schedule() + [(215.0, "msg_2")], [(221.0, DISABLED)])
        result = webhook_schedule.summary(held, "msg_1", FACTOR)
        self.assertTrue(result["ok"], result)
        self.assertEqual(result["attempts_of_one_message"], 8)
        self.assertEqual(result["disabled"]["after_first_failure_s"], 121.0)

    def test_a_wait_off_its_step_a_missing_attempt_or_an_early_disabling_fail(self):
        off = requests(on_schedule(waits=(1, 1, 1, 2, 30, 10, 10)), [(221.0, DISABLED)])
        self.assertFalse(webhook_schedule.summary(off, "msg_1", FACTOR)["ok"])
        short = requests(on_schedule(waits=(1, 1, 1, 2, 5, 10)), [(221.0, DISABLED)])
        self.assertFalse(webhook_schedule.summary(short, "msg_1", FACTOR)["ok"])
        early = requests(on_schedule(), [(150.0, DISABLED)])
        self.assertFalse(webhook_schedule.summary(early, "msg_1", FACTOR)["disabled"]["ok"])

    def test_an_attempt_after_the_disabling_or_no_disabling_fail(self):
        late = requests(on_schedule() + [(230.0, "msg_3")], [(221.0, DISABLED)])
        result = webhook_schedule.summary(late, "msg_1", FACTOR)
        self.assertEqual(result["disabled"]["attempts_after_it"], 1)
        self.assertFalse(result["ok"])
        never = requests(on_schedule())
        self.assertFalse(webhook_schedule.summary(never, "msg_1", FACTOR)["ok"])


if __name__ == "__main__":
    unittest.main()
