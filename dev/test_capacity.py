import unittest

from capacity import Index, Ledger

KEYS_ONLY = {"IndexName": "by-email", "KeySchema": [{"AttributeName": "email_key", "KeyType": "HASH"}],
             "Projection": {"ProjectionType": "KEYS_ONLY"}}
ALL = dict(KEYS_ONLY, IndexName="by-email-all", Projection={"ProjectionType": "ALL"})


def user(email, padding):
    return {"pk": {"S": "ws#u1"}, "email_key": {"S": email}, "traits": {"S": "x" * padding}}


class CapacityTest(unittest.TestCase):
    def setUp(self):
        self.ledger = Ledger({"users": [Index(KEYS_ONLY, ["pk"]), Index(ALL, ["pk"])]})

    def write(self, before, after):
        self.ledger.write("users", before, after)
        return self.ledger.tables["users"]

    def test_a_table_write_bills_the_larger_image_per_started_kb(self):
        self.assertEqual(self.write(user("a", 3000), user("a", 100))["write"], 3)

    def test_a_keys_only_index_bills_nothing_when_its_key_stays(self):
        indexes = self.write(user("a", 100), user("a", 1500))["indexes"]
        self.assertEqual(indexes["by-email"], 0)
        self.assertEqual(indexes["by-email-all"], 2, "an ALL projection rewrites the whole item")

    def test_a_changed_index_key_is_a_delete_and_a_put(self):
        self.assertEqual(self.write(user("a", 10), user("b", 10))["indexes"]["by-email"], 2)

    def test_a_new_item_puts_one_entry_per_index(self):
        self.assertEqual(self.write(None, user("a", 10))["indexes"], {"by-email": 1, "by-email-all": 1})

    def test_a_failed_condition_bills_the_existing_item_only(self):
        self.ledger.failed_condition("users", user("a", 2500))
        self.ledger.failed_condition("users", None)
        table = self.ledger.tables["users"]
        self.assertEqual((table["write"], table["indexes"]), (3 + 1, {}))

    def test_reads_bill_per_item_or_per_query(self):
        self.ledger.read("users", [user("a", 5000), {}], consistent=True)
        self.ledger.read("users", [user("a", 3000), user("b", 3000)], consistent=False, together=True)
        self.assertEqual(self.ledger.tables["users"]["read"], 2 + 1 + 1)


if __name__ == "__main__":
    unittest.main()
