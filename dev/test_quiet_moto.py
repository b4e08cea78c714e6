"""The emulator as the stack runs it (stack/quiet_moto.py): a transaction backs each
table up once, whatever its number of items, and still rolls back whole."""
import copy
import unittest
from unittest import mock

import boto3
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from stack import quiet_moto

ITEMS = 67  # a define's transaction: the revision, 32 copies of it, 32 of the definition, …


class OneBackupPerTable(unittest.TestCase):
    def setUp(self):
        original = DynamoDBBackend.transact_write_items
        self.addCleanup(setattr, DynamoDBBackend, "transact_write_items", original)
        quiet_moto.one_backup_per_table()
        aws = mock_aws()
        aws.start()
        self.addCleanup(aws.stop)
        self.dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        self.dynamodb.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])

    def puts(self, tag):
        return [{"Put": {"TableName": "t", "Item": {"pk": {"S": f"k{k}"}, "tag": {"S": tag}}}}
                for k in range(ITEMS)]

    def test_a_transaction_of_many_items_backs_its_table_up_once(self):
        copied = []
        real = copy.deepcopy

        def counted(value, *args, **kwargs):
            copied.append(type(value).__name__)
            return real(value, *args, **kwargs)

        with mock.patch.object(copy, "deepcopy", counted):
            self.dynamodb.transact_write_items(TransactItems=self.puts("first"))
        self.assertEqual(copied.count("Table"), 1)
        self.assertEqual(self.dynamodb.scan(TableName="t")["Count"], ITEMS)

    def test_a_failed_condition_still_rolls_the_whole_transaction_back(self):
        self.dynamodb.transact_write_items(TransactItems=self.puts("first"))
        items = self.puts("second")
        items[-1]["Put"]["ConditionExpression"] = "attribute_not_exists(pk)"
        with self.assertRaises(self.dynamodb.exceptions.TransactionCanceledException):
            self.dynamodb.transact_write_items(TransactItems=items)
        tags = {item["tag"]["S"] for item in self.dynamodb.scan(TableName="t")["Items"]}
        self.assertEqual(tags, {"first"})


if __name__ == "__main__":
    unittest.main()
