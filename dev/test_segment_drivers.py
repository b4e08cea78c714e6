"""The Segment-protocol drivers' pure parts (dev/segment/python_driver.py): where each
library family puts an identify's traits, its defaults, how a phase's requests are
judged (batches, a retry's resend folded, the retry header each family sends), and the
libraries pinned exactly where the drivers install them from."""
import importlib.util
import json
import re
import unittest
from pathlib import Path

DEV = Path(__file__).resolve().parent
# Loaded by path: dev/segment is no package, and `segment` is the library's own name.
_spec = importlib.util.spec_from_file_location("python_driver", DEV / "segment" / "python_driver.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

SEGMENT = driver.LIBRARIES["segment"]
RUDDERSTACK = driver.LIBRARIES["rudderstack"]


def request(phase, ids, client_status=200, retry=None):
    return {"phase": phase, "message_ids": ids, "client_status": client_status, "x_retry_count": retry}


def sent(**phases):
    return {name: [{"messageId": i} for i in ids] for name, ids in phases.items()}


class Libraries(unittest.TestCase):
    def test_each_family_carries_identify_traits_where_its_library_puts_them(self):
        traits = {"email": "u1@example.com", "plan": "pro"}
        # As captured (README.md): Segment's at the top; RudderStack's Python only in context.
        segment_msg = {"type": "identify", "traits": traits, "context": {"library": {"name": "analytics-python"}}}
        rudder_msg = {"type": "identify", "context": {"traits": traits, "library": {"name": "analytics-python"}}}
        self.assertEqual(SEGMENT.traits(segment_msg), traits)
        self.assertEqual(RUDDERSTACK.traits(rudder_msg), traits)
        self.assertIsNone(SEGMENT.traits(rudder_msg))
        self.assertIsNone(RUDDERSTACK.traits({"type": "track", "context": {"library": {}}}))
        self.assertIsNone(RUDDERSTACK.traits({"type": "identify", "context": None}))

    def test_defaults_are_the_libraries_own(self):
        self.assertFalse(SEGMENT.gzip)
        self.assertTrue(RUDDERSTACK.gzip)
        self.assertEqual(SEGMENT.retry_header, "1")
        self.assertIsNone(RUDDERSTACK.retry_header)
        self.assertEqual((SEGMENT.module, RUDDERSTACK.module), ("segment.analytics", "rudderstack.analytics"))
        # Only Segment's Client takes these bounds; RudderStack's would refuse them.
        self.assertEqual(set(SEGMENT.client_options), {"max_total_backoff_duration", "max_rate_limit_duration"})
        self.assertEqual(RUDDERSTACK.client_options, {})

    def test_every_library_the_drivers_load_is_pinned_exactly(self):
        pins = dict(re.findall(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)$", (DEV / "requirements.txt").read_text(), re.M))
        for lib in driver.LIBRARIES.values():
            self.assertIn(lib.package, pins)
        node = json.loads((DEV / "segment" / "package.json").read_text())["dependencies"]
        lock = json.loads((DEV / "segment" / "package-lock.json").read_text())["packages"]
        for name in ("@segment/analytics-node", "@rudderstack/rudder-sdk-node"):
            self.assertRegex(node[name], r"^\d+\.\d+\.\d+$")
            self.assertEqual(lock["node_modules/" + name]["version"], node[name])


class PhaseChecks(unittest.TestCase):
    def test_a_retry_is_one_batch_sent_again(self):
        self.assertEqual(driver.fold_resends([["m1"], ["m1"], ["m2", "m3"]]), [["m1"], ["m2", "m3"]])
        self.assertEqual(driver.fold_resends([]), [])

    def test_one_batch_a_phase_and_a_retry_with_the_familys_header(self):
        msgs = sent(a=["a1", "a2"], c=["c1"])
        log = [request("a", ["a1", "a2"]), request("c", ["c1"], 503), request("c", ["c1"], retry="1")]
        self.assertEqual(driver.phase_checks(msgs, log, "1"),
                         {"a_batched": True, "c_batched": True, "c_retried_identical_batch": True})
        # RudderStack's libraries send no X-Retry-Count: the same log is not their retry.
        self.assertFalse(driver.phase_checks(msgs, log, None)["c_retried_identical_batch"])
        quiet = log[:2] + [request("c", ["c1"])]
        self.assertTrue(driver.phase_checks(msgs, quiet, None)["c_retried_identical_batch"])

    def test_a_phase_split_otherwise_than_its_library_batches_fails(self):
        msgs = sent(a=["a1", "a2"])
        split = [request("a", ["a1"]), request("a", ["a2"])]
        self.assertFalse(driver.phase_checks(msgs, split, "1")["a_batched"])
        # RudderStack's Node library: the first message of a new client alone, then the rest.
        first_alone = lambda ids: [ids[:1], ids[1:]] if len(ids) > 1 else [ids]
        self.assertTrue(driver.phase_checks(msgs, split, None, first_alone)["a_batched"])
        self.assertFalse(driver.phase_checks(msgs, [], "1")["a_batched"])
        self.assertFalse(driver.phase_checks(msgs, [request("a", None)], "1")["a_batched"])

    def test_a_retry_needs_the_injected_503_and_the_same_messages(self):
        msgs = sent(c=["c1"])
        other = [request("c", ["c1"], 503), request("c", ["c2"], retry="1")]
        self.assertFalse(driver.phase_checks(msgs, other, "1")["c_retried_identical_batch"])
        unretried = [request("c", ["c1"])]
        self.assertFalse(driver.phase_checks(msgs, unretried, "1")["c_retried_identical_batch"])


if __name__ == "__main__":
    unittest.main()
