"""DynamoDB's limits on what a request may carry, which moto does not (all) enforce.

The local stack's FaultProxy asks `violation` about every DynamoDB call and answers
DynamoDB's ValidationException itself when it names one, so that code which would fail
in AWS fails locally too. The rules are the DynamoDB Developer Guide's ("Service,
account, and table quotas"; "Item sizes and formats"):

- a partition key value is at most 2,048 bytes and a sort key value at most 1,024
  (UTF-8 bytes of an S, raw bytes of a B), in items, keys and a Query's key condition;
  a whole item's global secondary index keys too (an email past 2 KB in `email_key`);
- an attribute name is at least one byte long, map keys at any depth included;
- a number has at most 38 significant digits and, unless zero, a magnitude from 1E-130
  to 9.9999999999999999999999999999999999999E+125;
- an item is at most 400 KB (409,600 bytes), counted as `item_size` counts.

What is not checked:
- the size of what an UpdateItem leaves: the resulting item is not known without
  applying the update expression to the stored item, so only whole items (PutItem,
  BatchWriteItem puts, TransactWriteItems puts) are size-checked;
- index key sizes in what an UpdateItem sets (the item it leaves is not known);
- a Query's partition key value is not told apart from the other key condition values:
  every S value the KeyConditionExpression names is held to 2,048 bytes (values that
  only a FilterExpression uses are left alone, as DynamoDB leaves them);
- the legacy parameters (Expected, AttributeUpdates, KeyConditions, ScanFilter…) and
  PartiQL statements.
"""
import re

MAX_ITEM_BYTES = 400 * 1024
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
MAX_SIGNIFICANT_DIGITS = 38
# Powers of ten of the leading digit: 9.99…E+125 is the largest magnitude, 1E-130 the
# smallest.
MAX_MAGNITUDE = 125
MIN_MAGNITUDE = -130

ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"
PARTITION_KEY_TOO_LARGE = ("One or more parameter values were invalid: "
                           "Size of hashkey has exceeded the maximum size limit of 2048 bytes")
SORT_KEY_TOO_LARGE = ("One or more parameter values were invalid: "
                      "Aggregated size of all range keys has exceeded the size limit of 1024 bytes")
EMPTY_ATTRIBUTE_NAME = "Supplied AttributeValue has an empty attribute name"
EMPTY_EXPRESSION_NAME = "ExpressionAttributeNames contains invalid value: Empty attribute name for key {}"
TOO_MANY_DIGITS = "Attempting to store more than 38 significant digits in a Number"
NUMBER_OVERFLOW = "Number overflow. Attempting to store a number with magnitude larger than supported range"
NUMBER_UNDERFLOW = "Number underflow. Attempting to store a number with magnitude smaller than supported range"
NOT_A_NUMBER = "The parameter cannot be converted to a numeric value: {}"

_NUMBER = re.compile(r"[+-]?(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?(?:[eE](?P<exponent>[+-]?[0-9]+))?")
_VALUE_PLACEHOLDER = re.compile(r":[A-Za-z0-9_]+")
# An exponent longer than this is clamped to 10**10: no request DynamoDB takes (16 MB at
# most) has enough digits to bring such a number back into range.
_MAX_EXPONENT_DIGITS = 10


def violation(target, request, key_schemas, index_schemas=None):
    """DynamoDB's ValidationException message for `request`, or None if DynamoDB takes it.

    `target` is the X-Amz-Target header, `request` the parsed body, `key_schemas` maps
    a table name to (partition key attribute, sort key attribute or None),
    `index_schemas` a table name to the same pairs of its global secondary indexes. The
    first problem found is the one reported, as DynamoDB reports one.
    """
    operation = target.rpartition(".")[2]
    schemas = _Schemas(key_schemas, index_schemas or {})
    return next(filter(None, _problems(operation, request, schemas)), None)


class _Schemas:
    """A table's key schema, and its indexes' for whole items."""

    def __init__(self, key_schemas, index_schemas):
        self.key_schemas, self.index_schemas = key_schemas, index_schemas

    def get(self, table):
        return self.key_schemas.get(table)

    def indexes(self, table):
        return self.index_schemas.get(table, [])


def item_size(item):
    """An item's size as DynamoDB limits it to 400 KB.

    Per the Developer Guide ("Item sizes and formats"): each attribute counts the UTF-8
    length of its name plus the size of its value; S is its UTF-8 bytes, B its raw bytes,
    N about one byte per two significant digits plus one, BOOL and NULL one byte, a set
    the sum of its elements, and L or M three bytes plus, per element, one byte and the
    element's size (and, in an M, its key's length).
    """
    return sum(_utf8_length(name) + _value_size(value) for name, value in item.items())


# --- which parts of a request to check -----------------------------------------------

def _problems(operation, request, key_schemas):
    """Each checkable part's problem (or None), lazily and in request order, so that
    checking stops at the first one."""
    if operation == "BatchWriteItem":
        yield from _batch_write_problems(request, key_schemas)
    elif operation == "BatchGetItem":
        yield from _batch_get_problems(request, key_schemas)
    elif operation in ("TransactWriteItems", "TransactGetItems"):
        for entry in request.get("TransactItems", []):
            for action in entry.values():
                yield from _table_request_problems(action, key_schemas)
    else:
        yield from _table_request_problems(request, key_schemas)


def _batch_write_problems(request, key_schemas):
    """A BatchWriteItem's puts are whole items, its deletes keys."""
    for table, writes in request.get("RequestItems", {}).items():
        schema = _key_schema(key_schemas, table)
        for write in writes:
            if "PutRequest" in write:
                yield _item_problem(write["PutRequest"].get("Item", {}), schema, _index_schemas(key_schemas, table))
            if "DeleteRequest" in write:
                yield _key_problem(write["DeleteRequest"].get("Key", {}), schema)


def _batch_get_problems(request, key_schemas):
    """A BatchGetItem names keys and, per table, expression attribute names."""
    for table, reads in request.get("RequestItems", {}).items():
        schema = _key_schema(key_schemas, table)
        for key in reads.get("Keys", []):
            yield _key_problem(key, schema)
        yield _expression_names_problem(reads.get("ExpressionAttributeNames", {}))


def _table_request_problems(request, key_schemas):
    """A request on one table (PutItem, GetItem, Query…, or one action of a transaction):
    whichever of an item, a key, expression values and names it carries."""
    schema = _key_schema(key_schemas, request.get("TableName", ""))
    if "Item" in request:
        yield _item_problem(request["Item"], schema, _index_schemas(key_schemas, request.get("TableName", "")))
    if "Key" in request:
        yield _key_problem(request["Key"], schema)
    if "ExclusiveStartKey" in request:
        yield _attributes_problem(request["ExclusiveStartKey"])
    values = request.get("ExpressionAttributeValues", {})
    yield _attributes_problem(values)
    yield _key_condition_problem(request.get("KeyConditionExpression", ""), values)
    yield _expression_names_problem(request.get("ExpressionAttributeNames", {}))


def _key_schema(key_schemas, table):
    """The table's (partition, sort) key names; a table may be named by its ARN."""
    return key_schemas.get(table.rpartition("/")[2])


def _index_schemas(schemas, table):
    """The (partition, sort) key names of the table's global secondary indexes."""
    return schemas.indexes(table.rpartition("/")[2])


# --- the checks ----------------------------------------------------------------------

def _item_problem(item, schema, index_schemas=()):
    """A whole item: its names and numbers, its key sizes and its index keys' (an index
    key the item lacks leaves it out of that index), then its size."""
    return (_attributes_problem(item) or _key_size_problem(item, schema)
            or next(filter(None, (_key_size_problem(item, index) for index in index_schemas
                                  if all(key in item for key in index if key))), None)
            or (ITEM_TOO_LARGE if item_size(item) > MAX_ITEM_BYTES else None))


def _key_problem(key, schema):
    """A key: its names and numbers, then its sizes."""
    return _attributes_problem(key) or _key_size_problem(key, schema)


def _key_size_problem(attributes, schema):
    """Key values past the partition (2,048 bytes) or sort (1,024 bytes) key limit, when
    the table's key schema is known."""
    if schema is None:
        return None
    partition, sort = schema
    if _key_value_bytes(attributes.get(partition)) > MAX_PARTITION_KEY_BYTES:
        return PARTITION_KEY_TOO_LARGE
    if sort and _key_value_bytes(attributes.get(sort)) > MAX_SORT_KEY_BYTES:
        return SORT_KEY_TOO_LARGE
    return None


def _key_value_bytes(value):
    """The bytes a key value counts: UTF-8 of an S, raw bytes of a B (a number key, at
    most 21 bytes, is never near the limits)."""
    if not value:
        return 0
    if "S" in value:
        return _utf8_length(value["S"])
    if "B" in value:
        return _base64_decoded_length(value["B"])
    return 0


def _key_condition_problem(expression, values):
    """A Query's key values past the partition key limit: every S value that the key
    condition names is held to 2,048 bytes, as which of them binds the partition key is
    not worked out (see the module's docstring)."""
    for placeholder in _VALUE_PLACEHOLDER.findall(expression):
        value = values.get(placeholder, {})
        if "S" in value and _utf8_length(value["S"]) > MAX_PARTITION_KEY_BYTES:
            return PARTITION_KEY_TOO_LARGE
    return None


def _expression_names_problem(names):
    """An ExpressionAttributeNames entry that stands for an empty name."""
    for placeholder, name in names.items():
        if not name:
            return EMPTY_EXPRESSION_NAME.format(placeholder)
    return None


def _attributes_problem(attributes):
    """The first empty attribute name or refused number in a map of attribute values
    (an item, a key, ExpressionAttributeValues or an M), at any depth."""
    for name, value in attributes.items():
        problem = _value_problem(value) if name else EMPTY_ATTRIBUTE_NAME
        if problem:
            return problem
    return None


def _value_problem(value):
    """An attribute value's refused number or empty map key, looking inside N, NS, M
    and L (the other types hold neither)."""
    for kind, data in value.items():
        if kind == "N":
            return _number_problem(data)
        if kind == "NS":
            return next(filter(None, map(_number_problem, data)), None)
        if kind == "M":
            return _attributes_problem(data)
        if kind == "L":
            return next(filter(None, map(_value_problem, data)), None)
    return None


def _number_problem(text):
    """Why DynamoDB refuses this number, worked out on its decimal text (a float would
    round away the 38 digits and the range DynamoDB holds them to): not a number, out
    of range, or too many significant digits; zero of any form is fine. A plain integer
    of at most 38 digits, what most stored numbers are, is fine without the regex."""
    if len(text) <= MAX_SIGNIFICANT_DIGITS and text.isascii() and text.isdigit():
        return None
    number = _NUMBER.fullmatch(text)
    if not number or not (number["whole"] or number["fraction"]):
        return NOT_A_NUMBER.format(text)
    digits = _significant_digits(text)
    if not digits:
        return None
    magnitude = _magnitude(number)
    if magnitude > MAX_MAGNITUDE:
        return NUMBER_OVERFLOW
    if magnitude < MIN_MAGNITUDE:
        return NUMBER_UNDERFLOW
    if len(digits) > MAX_SIGNIFICANT_DIGITS:
        return TOO_MANY_DIGITS
    return None


def _magnitude(number):
    """The power of ten of a non-zero number's leading digit: 3 for 1234.5, -3 for
    0.00123, 126 for 1E+126."""
    whole, fraction = number["whole"], number["fraction"] or ""
    digits = whole + fraction
    leading_zeros = len(digits) - len(digits.lstrip("0"))
    return _exponent(number["exponent"]) + len(whole) - leading_zeros - 1


def _exponent(text):
    """The value of a number's exponent (0 when it has none), clamped so that int()
    never parses thousands of digits (see _MAX_EXPONENT_DIGITS)."""
    if text is None:
        return 0
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > _MAX_EXPONENT_DIGITS:
        return sign * 10 ** _MAX_EXPONENT_DIGITS
    return sign * int(digits or "0")


def _significant_digits(text):
    """A number's mantissa digits less leading and trailing zeros, as DynamoDB trims
    them before it counts and stores them."""
    mantissa = text.partition("e")[0].partition("E")[0]
    return mantissa.lstrip("+-").replace(".", "").strip("0")


# --- sizes ---------------------------------------------------------------------------

def _value_size(value):
    """The bytes an attribute value counts for (see item_size)."""
    for kind, data in value.items():
        if kind == "S":
            return _utf8_length(data)
        if kind == "N":
            return _number_size(data)
        if kind == "B":
            return _base64_decoded_length(data)
        if kind == "SS":
            return sum(map(_utf8_length, data))
        if kind == "NS":
            return sum(map(_number_size, data))
        if kind == "BS":
            return sum(map(_base64_decoded_length, data))
        if kind == "L":
            return 3 + sum(1 + _value_size(element) for element in data)
        if kind == "M":
            return 3 + sum(1 + _utf8_length(name) + _value_size(element) for name, element in data.items())
        return 1  # BOOL and NULL
    return 0


def _number_size(text):
    """The guide's approximation of a number's size: one byte per two significant
    digits, rounded up, plus one."""
    return (len(_significant_digits(text)) + 1) // 2 + 1


def _utf8_length(text):
    """Bytes of a string as DynamoDB stores it (UTF-8)."""
    return len(text.encode("utf-8"))


def _base64_decoded_length(text):
    """Raw bytes of a B value, which the JSON protocol carries base64-encoded: counted
    from the encoding's length rather than by decoding it (boto3's items hold bytes)."""
    if isinstance(text, (bytes, bytearray)):
        return len(text)
    return len(text) * 3 // 4 - text.count("=", -2)
