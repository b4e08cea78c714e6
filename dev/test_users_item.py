"""dev/stack/users_item.py reads the users items the Rust code writes: the committed
samples (tests/fixtures/users_v2_sample.json, format 2 plain and deflated, each with the
same user in format 1) spread out as format 1 has them."""
import base64
import json
import unittest
from pathlib import Path

from boto3.dynamodb.types import TypeDeserializer

from stack.users_item import as_format_1, json_numbers

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "users_v2_sample.json"


def deserialized(item):
    """As TypeDeserializer gives a scanned item (boto3 hands B over as bytes)."""
    def raw(value):
        (kind, data), = value.items()
        if kind == "B":
            return {"B": base64.b64decode(data)}
        if kind == "M":
            return {"M": {k: raw(v) for k, v in data.items()}}
        if kind == "L":
            return {"L": [raw(v) for v in data]}
        return value
    return {name: TypeDeserializer().deserialize(raw(value)) for name, value in item.items()}


class UsersItem(unittest.TestCase):
    def test_format_2_samples_read_as_their_format_1_twins(self):
        samples = json.loads(SAMPLES.read_text())
        self.assertEqual(len(samples), 3)
        for sample in samples:
            format_2, format_1 = deserialized(sample["format_2"]), deserialized(sample["format_1"])
            self.assertIn("profile", format_2)
            spread = as_format_1(format_2)
            self.assertNotIn("profile", spread)
            # Format 2's `profile_version` spread out as `version`.
            self.assertEqual(spread["version"], format_2["profile_version"])
            for item in (spread, format_1):
                item.pop("version")
            self.maxDiff = None
            self.assertEqual(json_numbers(spread), json_numbers(format_1))

    def test_a_format_1_item_is_left_as_it_is(self):
        item = {"pk": "ws#u1", "stamps": {"plan": "5/r1"}, "plan": "pro"}
        self.assertIs(as_format_1(item), item)


if __name__ == "__main__":
    unittest.main()
