"""The emulator as the stack runs it (stack/quiet_moto.py): a transaction copies no
table, whatever the size of its tables, and still rolls back whole: items put, updated
and deleted, and the stream records its writes appended; a query reads its partition
only, and answers as before; a host's service is found once."""
import copy
import unittest
from unittest import mock

import boto3
from moto import mock_aws
from moto import backends
from moto.dynamodb import models
from moto.dynamodb.models import DynamoDBBackend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from stack import quiet_moto

ITEMS = 67  # a define's transaction: the revision, 32 copies of it, 32 of the definition, …
KEYS = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]


def patched_table(test, owner, name, patch, **table):
    """`patch` applied to `owner.name` for the test, moto started, and table `t` (pk, sk
    and `table`'s settings) created: the DynamoDB client."""
    test.addCleanup(setattr, owner, name, getattr(owner, name))
    patch()
    aws = mock_aws()
    aws.start()
    test.addCleanup(aws.stop)
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST", KeySchema=KEYS, **table)
    return dynamodb


class ItemBackupsOnly(unittest.TestCase):
    def setUp(self):
        self.dynamodb = patched_table(
            self, DynamoDBBackend, "transact_write_items", quiet_moto.item_backups_only,
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
        self.streams = boto3.client("dynamodbstreams", region_name="us-east-1")

    def puts(self, tag):
        return [{"Put": {"TableName": "t", "Item": {"pk": {"S": f"k{k % 3}"}, "sk": {"S": f"s{k}"}, "tag": {"S": tag}}}}
                for k in range(ITEMS)]

    def stored(self):
        return {(i["pk"]["S"], i["sk"]["S"]): i["tag"]["S"] for i in self.dynamodb.scan(TableName="t")["Items"]}

    def stream_length(self):
        arn = self.dynamodb.describe_table(TableName="t")["Table"]["LatestStreamArn"]
        shard = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = self.streams.get_shard_iterator(StreamArn=arn, ShardId=shard,
                                                   ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        return len(self.streams.get_records(ShardIterator=iterator, Limit=1000)["Records"])

    def test_a_transaction_copies_no_table(self):
        copied = []
        real = copy.deepcopy

        def counted(value, *args, **kwargs):
            copied.append(type(value).__name__)
            return real(value, *args, **kwargs)

        with mock.patch.object(copy, "deepcopy", counted):
            self.dynamodb.transact_write_items(TransactItems=self.puts("first"))
        self.assertNotIn("Table", copied)
        self.assertEqual(set(self.stored().values()), {"first"})
        self.assertEqual(len(self.stored()), ITEMS)

    def test_a_failed_condition_rolls_back_its_puts_updates_deletes_and_stream_records(self):
        self.dynamodb.transact_write_items(TransactItems=self.puts("first"))
        before, records = self.stored(), self.stream_length()
        items = self.puts("second")[:60]
        items += [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "new"}, "sk": {"S": "n"}, "tag": {"S": "second"}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "k0"}, "sk": {"S": "s60"}},
                        "UpdateExpression": "SET tag = :t", "ExpressionAttributeValues": {":t": {"S": "second"}}}},
            {"Delete": {"TableName": "t", "Key": {"pk": {"S": "k1"}, "sk": {"S": "s61"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "k2"}, "sk": {"S": "s62"}},
                                "ConditionExpression": "attribute_not_exists(pk)"}},
        ]
        with self.assertRaises(self.dynamodb.exceptions.TransactionCanceledException):
            self.dynamodb.transact_write_items(TransactItems=items)
        self.assertEqual(self.stored(), before)
        self.assertEqual(self.stream_length(), records)
        # And the table still takes writes, streamed.
        self.dynamodb.transact_write_items(TransactItems=items[:-1])
        self.assertEqual(self.stored()[("new", "n")], "second")
        self.assertNotIn(("k1", "s61"), self.stored())
        self.assertEqual(self.stream_length(), records + len(items) - 1)

    def test_an_item_named_twice_is_refused_and_left_as_it_was(self):
        self.dynamodb.transact_write_items(TransactItems=self.puts("first")[:2])
        twice = [{"Put": {"TableName": "t", "Item": {"pk": {"S": "k0"}, "sk": {"S": "s0"}, "tag": {"S": tag}}}}
                 for tag in ("second", "third")]
        with self.assertRaises(self.dynamodb.exceptions.ClientError):
            self.dynamodb.transact_write_items(TransactItems=twice)
        self.assertEqual(self.stored(), {("k0", "s0"): "first", ("k1", "s1"): "first"})


class OnePartitionPerQuery(unittest.TestCase):
    def setUp(self):
        self.dynamodb = patched_table(
            self, models.Table, "query", quiet_moto.one_partition_per_query,
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "g")],
            GlobalSecondaryIndexes=[{"IndexName": "by-g", "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"},
                                                   {"AttributeName": "sk", "KeyType": "RANGE"}]}])
        for p in range(3):
            for k in (7, 1, 5, 3, 9, 2):
                self.dynamodb.put_item(TableName="t", Item={
                    "pk": {"S": f"p{p}"}, "sk": {"S": f"s{k}"}, "g": {"S": f"g{k % 2}"}, "n": {"N": str(k)}})

    def keys(self, **query):
        return [(i["pk"]["S"], i["sk"]["S"]) for i in self.dynamodb.query(TableName="t", **query)["Items"]]

    def test_a_query_reads_its_partition_only_and_answers_as_dynamodb_does(self):
        with mock.patch.object(models.Table, "all_items", side_effect=AssertionError("the whole table read")):
            on = {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "p1"}}}
            self.assertEqual(self.keys(**on), [("p1", f"s{k}") for k in (1, 2, 3, 5, 7, 9)])
            self.assertEqual(self.keys(**on, ScanIndexForward=False), [("p1", f"s{k}") for k in (9, 7, 5, 3, 2, 1)])
            page = self.dynamodb.query(TableName="t", Limit=2, **on)
            self.assertEqual(page["LastEvaluatedKey"], {"pk": {"S": "p1"}, "sk": {"S": "s2"}})
            self.assertEqual(self.keys(**on, ExclusiveStartKey=page["LastEvaluatedKey"], Limit=2),
                             [("p1", "s3"), ("p1", "s5")])
            ranged = {"KeyConditionExpression": "pk = :p AND sk > :s", "FilterExpression": "n < :n",
                      "ExpressionAttributeValues": {":p": {"S": "p2"}, ":s": {"S": "s2"}, ":n": {"N": "9"}}}
            self.assertEqual(self.keys(**ranged), [("p2", "s3"), ("p2", "s5"), ("p2", "s7")])
            self.assertEqual(self.keys(KeyConditionExpression="pk = :p",
                                       ExpressionAttributeValues={":p": {"S": "none"}}), [])

    def test_an_index_query_still_reads_every_partition(self):
        self.assertEqual(self.keys(IndexName="by-g", KeyConditionExpression="g = :g",
                                   ExpressionAttributeValues={":g": {"S": "g0"}}),
                         [("p0", "s2"), ("p1", "s2"), ("p2", "s2")])


class BackendPerHostKept(unittest.TestCase):
    def test_the_service_of_a_host_is_found_once(self):
        self.addCleanup(setattr, DomainDispatcherApplication, "get_backend_for_host",
                        DomainDispatcherApplication.get_backend_for_host)
        quiet_moto.backend_per_host_kept()
        app = DomainDispatcherApplication(create_backend_app)
        hosts = ["dynamodb.us-east-1.amazonaws.com", "sqs.us-east-1.amazonaws.com", "events.us-east-1.amazonaws.com"]
        with mock.patch.object(backends, "list_of_moto_modules", wraps=backends.list_of_moto_modules) as listed:
            first = [app.get_backend_for_host(host) for host in hosts]
            again = [app.get_backend_for_host(host) for host in hosts]
        self.assertEqual(first, ["dynamodb", "sqs", "events"])
        self.assertEqual(again, first)
        self.assertEqual(listed.call_count, len(hosts))


if __name__ == "__main__":
    unittest.main()
