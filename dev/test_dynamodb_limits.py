"""dynamodb_limits: each DynamoDB limit on both sides of its boundary, in each operation
shape that carries it.

    python3 -m unittest discover -s dev -p 'test_dynamodb_limits.py'
"""
import base64
import unittest

from dynamodb_limits import (
    EMPTY_ATTRIBUTE_NAME, ITEM_TOO_LARGE, NUMBER_OVERFLOW, NUMBER_UNDERFLOW, PARTITION_KEY_TOO_LARGE,
    SORT_KEY_TOO_LARGE, TOO_MANY_DIGITS, item_size, violation,
)

SCHEMAS = {"users": ("pk", None), "events": ("pk", "sk")}
MAX_ITEM = 409_600


def call(operation, request):
    """violation() for a DynamoDB operation, with the test tables' key schemas."""
    return violation(f"DynamoDB_20120810.{operation}", request, SCHEMAS)


def put(item, table="users"):
    return call("PutItem", {"TableName": table, "Item": item})


def text(length):
    """An S value of `length` UTF-8 bytes."""
    return {"S": "k" * length}


def number(value):
    """An item whose attribute n is the number `value`."""
    return {"pk": {"S": "p"}, "n": {"N": value}}


def padded_item(size, extra=None):
    """An item of exactly `size` bytes by the size rule: pk "p" (2 + 1 bytes), the
    `extra` attributes, and a "pad" S (3 bytes of name) taking up the rest."""
    item = {"pk": {"S": "p"}, **(extra or {})}
    item["pad"] = {"S": "x" * (size - item_size(item) - 3)}
    return item


class PartitionAndSortKeySize(unittest.TestCase):
    def test_partition_key_of_2048_bytes_is_taken_2049_refused(self):
        self.assertIsNone(put({"pk": text(2048)}))
        self.assertEqual(put({"pk": text(2049)}), PARTITION_KEY_TOO_LARGE)

    def test_partition_key_counts_utf8_bytes(self):
        self.assertIsNone(put({"pk": {"S": "é" * 1024}}))
        self.assertEqual(put({"pk": {"S": "é" * 1024 + "k"}}), PARTITION_KEY_TOO_LARGE)

    def test_binary_partition_key_counts_raw_bytes(self):
        def binary(length):
            return {"B": base64.b64encode(b"\x01" * length).decode()}
        self.assertIsNone(put({"pk": binary(2048)}))
        self.assertEqual(put({"pk": binary(2049)}), PARTITION_KEY_TOO_LARGE)

    def test_sort_key_of_1024_bytes_is_taken_1025_refused(self):
        self.assertIsNone(put({"pk": text(2048), "sk": text(1024)}, table="events"))
        self.assertEqual(put({"pk": {"S": "p"}, "sk": text(1025)}, table="events"), SORT_KEY_TOO_LARGE)

    def test_a_global_secondary_index_key_of_a_whole_item_is_held_to_the_same_limits(self):
        indexes = {"users": [("email_key", None), ("shard", "pk")]}

        def put_indexed(item):
            return violation("DynamoDB_20120810.PutItem", {"TableName": "users", "Item": item}, SCHEMAS, indexes)
        self.assertIsNone(put_indexed({"pk": {"S": "p"}, "email_key": text(2048)}))
        self.assertEqual(put_indexed({"pk": {"S": "p"}, "email_key": text(2049)}), PARTITION_KEY_TOO_LARGE)
        self.assertEqual(put_indexed({"pk": text(1025), "shard": {"S": "s"}}), SORT_KEY_TOO_LARGE)
        # An item without the index's key is not in that index.
        self.assertIsNone(put_indexed({"pk": text(1025)}))
        batch = {"RequestItems": {"users": [{"PutRequest": {"Item": {"pk": {"S": "p"}, "email_key": text(2049)}}}]}}
        self.assertEqual(violation("DynamoDB_20120810.BatchWriteItem", batch, SCHEMAS, indexes),
                         PARTITION_KEY_TOO_LARGE)

    def test_a_non_key_attribute_may_be_longer(self):
        self.assertIsNone(put({"pk": {"S": "p"}, "sk": text(5000)}))

    def test_a_table_of_unknown_schema_is_not_key_checked(self):
        self.assertIsNone(put({"pk": text(5000)}, table="unknown"))

    def test_a_table_named_by_its_arn(self):
        arn = "arn:aws:dynamodb:us-east-1:123456789012:table/users"
        self.assertEqual(put({"pk": text(2049)}, table=arn), PARTITION_KEY_TOO_LARGE)

    def test_get_update_and_delete_item_keys(self):
        for operation in ("GetItem", "UpdateItem", "DeleteItem"):
            with self.subTest(operation):
                self.assertIsNone(call(operation, {"TableName": "users", "Key": {"pk": text(2048)}}))
                self.assertEqual(call(operation, {"TableName": "users", "Key": {"pk": text(2049)}}),
                                 PARTITION_KEY_TOO_LARGE)
                self.assertEqual(call(operation, {"TableName": "events",
                                                  "Key": {"pk": text(1), "sk": text(1025)}}),
                                 SORT_KEY_TOO_LARGE)

    def test_batch_write_item_puts_and_deletes(self):
        def batch(request):
            return call("BatchWriteItem", {"RequestItems": {"users": [
                {"PutRequest": {"Item": {"pk": text(10)}}}, request]}})
        self.assertIsNone(batch({"PutRequest": {"Item": {"pk": text(2048)}}}))
        self.assertEqual(batch({"PutRequest": {"Item": {"pk": text(2049)}}}), PARTITION_KEY_TOO_LARGE)
        self.assertIsNone(batch({"DeleteRequest": {"Key": {"pk": text(2048)}}}))
        self.assertEqual(batch({"DeleteRequest": {"Key": {"pk": text(2049)}}}), PARTITION_KEY_TOO_LARGE)

    def test_batch_get_item_keys(self):
        def batch(key):
            return call("BatchGetItem", {"RequestItems": {"users": {"Keys": [{"pk": text(1)}, key]}}})
        self.assertIsNone(batch({"pk": text(2048)}))
        self.assertEqual(batch({"pk": text(2049)}), PARTITION_KEY_TOO_LARGE)

    def test_transact_write_items_every_action(self):
        shapes = {"Put": "Item", "Update": "Key", "Delete": "Key", "ConditionCheck": "Key"}
        for action, field in shapes.items():
            with self.subTest(action):
                def transact(key):
                    return call("TransactWriteItems", {"TransactItems": [
                        {action: {"TableName": "users", field: key}}]})
                self.assertIsNone(transact({"pk": text(2048)}))
                self.assertEqual(transact({"pk": text(2049)}), PARTITION_KEY_TOO_LARGE)

    def test_transact_get_items(self):
        def transact(key):
            return call("TransactGetItems", {"TransactItems": [{"Get": {"TableName": "users", "Key": key}}]})
        self.assertIsNone(transact({"pk": text(2048)}))
        self.assertEqual(transact({"pk": text(2049)}), PARTITION_KEY_TOO_LARGE)

    def test_query_key_condition_values(self):
        def query(value, condition="pk = :v"):
            return call("Query", {"TableName": "users", "KeyConditionExpression": condition,
                                  "FilterExpression": "contains(bio, :b)",
                                  "ExpressionAttributeValues": {":v": value, ":b": text(5000)}})
        self.assertIsNone(query(text(2048)))
        self.assertEqual(query(text(2049)), PARTITION_KEY_TOO_LARGE)
        self.assertEqual(query(text(2049), condition="#k=:v"), PARTITION_KEY_TOO_LARGE)

    def test_query_filter_values_are_not_key_values(self):
        request = {"TableName": "users", "KeyConditionExpression": "pk = :v",
                   "FilterExpression": "contains(bio, :b)",
                   "ExpressionAttributeValues": {":v": text(10), ":b": text(5000)}}
        self.assertIsNone(call("Query", request))


class EmptyAttributeName(unittest.TestCase):
    def test_top_level_name(self):
        self.assertIsNone(put({"pk": {"S": "p"}, "a": {"S": ""}}))
        self.assertEqual(put({"pk": {"S": "p"}, "": {"S": "x"}}), EMPTY_ATTRIBUTE_NAME)

    def test_map_key_at_depth_3_in_a_list_inside_a_map(self):
        def traits(key):
            return {"pk": {"S": "p"}, "traits": {"M": {"tags": {"L": [{"M": {key: {"S": "x"}}}]}}}}
        self.assertIsNone(put(traits("a")))
        self.assertEqual(put(traits("")), EMPTY_ATTRIBUTE_NAME)

    def test_in_a_key(self):
        self.assertEqual(call("GetItem", {"TableName": "users", "Key": {"pk": text(1), "": text(1)}}),
                         EMPTY_ATTRIBUTE_NAME)

    def test_in_expression_attribute_values(self):
        def update(key):
            return call("UpdateItem", {"TableName": "users", "Key": {"pk": text(1)},
                                       "UpdateExpression": "SET m = :m",
                                       "ExpressionAttributeValues": {":m": {"M": {key: {"N": "1"}}}}})
        self.assertIsNone(update("a"))
        self.assertEqual(update(""), EMPTY_ATTRIBUTE_NAME)

    def test_in_expression_attribute_names(self):
        def update(name):
            return call("UpdateItem", {"TableName": "users", "Key": {"pk": text(1)},
                                       "UpdateExpression": "REMOVE #a",
                                       "ExpressionAttributeNames": {"#a": name}})
        self.assertIsNone(update("a"))
        self.assertEqual(update(""), "ExpressionAttributeNames contains invalid value: "
                                     "Empty attribute name for key #a")

    def test_in_batch_get_item_expression_attribute_names(self):
        request = {"RequestItems": {"users": {"Keys": [{"pk": text(1)}], "ProjectionExpression": "#a",
                                              "ExpressionAttributeNames": {"#a": ""}}}}
        self.assertIn("Empty attribute name", call("BatchGetItem", request))

    def test_in_a_transaction(self):
        request = {"TransactItems": [{"Put": {"TableName": "users",
                                              "Item": {"pk": text(1), "m": {"M": {"": {"NULL": True}}}}}}]}
        self.assertEqual(call("TransactWriteItems", request), EMPTY_ATTRIBUTE_NAME)


class Numbers(unittest.TestCase):
    def test_38_significant_digits_are_taken_39_refused(self):
        self.assertIsNone(put(number("9" * 38)))
        self.assertEqual(put(number("9" * 39)), TOO_MANY_DIGITS)
        self.assertEqual(put(number("1." + "2" * 38)), TOO_MANY_DIGITS)

    def test_leading_and_trailing_zeros_are_not_significant(self):
        self.assertIsNone(put(number("000" + "9" * 38 + "000")))
        self.assertIsNone(put(number("-0.000" + "1" * 38 + "000")))
        self.assertIsNone(put(number("1" + "0" * 100)))

    def test_1e_minus_130_is_taken_1e_minus_131_refused(self):
        self.assertIsNone(put(number("1E-130")))
        self.assertIsNone(put(number("-0." + "0" * 129 + "1")))
        self.assertEqual(put(number("1E-131")), NUMBER_UNDERFLOW)
        self.assertEqual(put(number("0." + "0" * 130 + "1")), NUMBER_UNDERFLOW)

    def test_largest_magnitude_is_taken_1e126_refused(self):
        self.assertIsNone(put(number("9.9999999999999999999999999999999999999E+125")))
        self.assertIsNone(put(number("-" + "9" * 38 + "E88")))
        self.assertEqual(put(number("1E+126")), NUMBER_OVERFLOW)
        self.assertEqual(put(number("1" + "0" * 126)), NUMBER_OVERFLOW)

    def test_zero_of_any_form_is_taken(self):
        for zero in ("0", "-0.0", "0E+999", "0.000", ".0"):
            with self.subTest(zero):
                self.assertIsNone(put(number(zero)))

    def test_other_forms_of_numbers(self):
        for value in ("5.", ".5", "+7", "1e5", "-2.5E-3"):
            with self.subTest(value):
                self.assertIsNone(put(number(value)))

    def test_not_a_number(self):
        for value in ("abc", "", "1e", "e5", ".", "NaN", "Infinity", "0x10", "1 ", "١"):
            with self.subTest(value):
                self.assertEqual(put(number(value)),
                                 f"The parameter cannot be converted to a numeric value: {value}")

    def test_an_exponent_of_thousands_of_digits(self):
        self.assertEqual(put(number("1E" + "9" * 5000)), NUMBER_OVERFLOW)
        self.assertEqual(put(number("1E-" + "9" * 5000)), NUMBER_UNDERFLOW)

    def test_number_set_elements(self):
        self.assertIsNone(put({"pk": text(1), "ns": {"NS": ["1", "1E-130"]}}))
        self.assertEqual(put({"pk": text(1), "ns": {"NS": ["1", "1E+126"]}}), NUMBER_OVERFLOW)

    def test_numbers_nested_in_lists_and_maps(self):
        item = {"pk": text(1), "m": {"M": {"l": {"L": [{"S": "a"}, {"N": "1E-131"}]}}}}
        self.assertEqual(put(item), NUMBER_UNDERFLOW)

    def test_numbers_in_keys_and_expression_values(self):
        self.assertEqual(call("GetItem", {"TableName": "unknown", "Key": {"id": {"N": "9" * 39}}}),
                         TOO_MANY_DIGITS)
        request = {"TableName": "users", "Key": {"pk": text(1)}, "UpdateExpression": "SET n = :n",
                   "ExpressionAttributeValues": {":n": {"N": "1E+126"}}}
        self.assertEqual(call("UpdateItem", request), NUMBER_OVERFLOW)


class ItemSize(unittest.TestCase):
    def test_exactly_409600_bytes_is_taken_409601_refused(self):
        self.assertIsNone(put(padded_item(MAX_ITEM)))
        self.assertEqual(put(padded_item(MAX_ITEM + 1)), ITEM_TOO_LARGE)

    def test_boundary_with_every_kind_of_value(self):
        extra = {"m": {"M": {"a": {"N": "12345"}, "l": {"L": [{"BOOL": True}, {"NULL": True}, {"B": "AAAA"}]}}},
                 "ss": {"SS": ["ab", "é"]}, "ns": {"NS": ["10", "-0.5"]}, "bs": {"BS": ["AQ==", "AQI="]}}
        # m: 1 + 3 + (1 + 1 + 4) + (1 + 1 + (3 + 2 + 2 + 4)) = 23; ss: 2 + 4; ns: 2 + 2 + 2; bs: 2 + 3
        self.assertEqual(item_size({**extra, "pk": {"S": "p"}}), 3 + 23 + 6 + 6 + 5)
        self.assertIsNone(put(padded_item(MAX_ITEM, extra)))
        self.assertEqual(put(padded_item(MAX_ITEM + 1, extra)), ITEM_TOO_LARGE)

    def test_batch_write_item_and_transaction_puts(self):
        for size, expected in ((MAX_ITEM, None), (MAX_ITEM + 1, ITEM_TOO_LARGE)):
            item = padded_item(size)
            with self.subTest(size=size):
                self.assertEqual(call("BatchWriteItem", {"RequestItems": {"users": [
                    {"PutRequest": {"Item": item}}]}}), expected)
                self.assertEqual(call("TransactWriteItems", {"TransactItems": [
                    {"Put": {"TableName": "users", "Item": item}}]}), expected)

    def test_update_item_is_not_size_checked(self):
        request = {"TableName": "users", "Key": {"pk": text(1)}, "UpdateExpression": "SET a = :a",
                   "ExpressionAttributeValues": {":a": text(MAX_ITEM)}}
        self.assertIsNone(call("UpdateItem", request))


class ItemSizeRule(unittest.TestCase):
    def test_name_plus_utf8_string(self):
        self.assertEqual(item_size({"né": {"S": "日本"}}), 3 + 6)

    def test_number_is_half_its_significant_digits_rounded_up_plus_one(self):
        self.assertEqual(item_size({"n": {"N": "12345"}}), 1 + 4)
        self.assertEqual(item_size({"n": {"N": "-0.001200E5"}}), 1 + 2)
        self.assertEqual(item_size({"n": {"N": "0"}}), 1 + 1)

    def test_binary_counts_raw_bytes(self):
        for raw in (b"", b"a", b"ab", b"abc", b"abcd"):
            with self.subTest(raw=raw):
                self.assertEqual(item_size({"b": {"B": base64.b64encode(raw).decode()}}), 1 + len(raw))

    def test_bool_and_null_are_one_byte(self):
        self.assertEqual(item_size({"t": {"BOOL": False}, "z": {"NULL": True}}), 2 + 2)

    def test_list_and_map_overhead(self):
        self.assertEqual(item_size({"l": {"L": []}}), 1 + 3)
        self.assertEqual(item_size({"m": {"M": {}}}), 1 + 3)
        self.assertEqual(item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}), 1 + 3 + (1 + 2) + (1 + 2))
        self.assertEqual(item_size({"m": {"M": {"key": {"S": "ab"}}}}), 1 + 3 + 1 + 3 + 2)

    def test_sets_sum_their_elements(self):
        self.assertEqual(item_size({"s": {"SS": ["a", "bc"]}}), 1 + 3)
        self.assertEqual(item_size({"s": {"NS": ["1", "123"]}}), 1 + 2 + 3)
        self.assertEqual(item_size({"s": {"BS": ["AQ==", "AQID"]}}), 1 + 1 + 3)


class OtherCalls(unittest.TestCase):
    def test_operations_without_attribute_values(self):
        self.assertIsNone(call("DescribeTable", {"TableName": "users"}))
        self.assertIsNone(call("ListTables", {}))

    def test_scan_start_key_numbers_are_checked(self):
        self.assertEqual(call("Scan", {"TableName": "users", "ExclusiveStartKey": {"n": {"N": "x"}}}),
                         "The parameter cannot be converted to a numeric value: x")


if __name__ == "__main__":
    unittest.main()
