"""A users item in format 1's layout, whichever format it holds, for the dev tools that
read the table directly (the drill's oracle, the scale run, the capacity run).

Format 2 (src/aws/dynamodb/users/document.rs) keeps the profile in one binary
attribute, `profile`: a format byte (1 MessagePack, 2 raw-deflated MessagePack), then a
map: `k` the distinct stamps as [timestamp or nil, accepted_at, request_id], `f` the
field keys of each stamp, `p` known fields by attribute, `t` traits, `o` pending
`set_once` writes, `r` rejected traits, `l`/`e`/`fl` the last write's, erasure's and
floor's stamp index, `c`/`u` created and updated times.
Format 1 keeps them as attributes, stamps as text (`accepted_at/request_id`, or
`timestamp~accepted_at/request_id`)."""
import zlib
from decimal import Decimal

import msgpack

PLAIN, DEFLATED = 1, 2


def stamp_text(record):
    timestamp, accepted_at, request_id = record
    times = f"{accepted_at}" if timestamp is None else f"{timestamp}~{accepted_at}"
    return f"{times}/{request_id}"


def document(data):
    """The `profile` attribute's map."""
    data = bytes(data)
    if data[0] == DEFLATED:
        return msgpack.unpackb(zlib.decompress(data[1:], -15), raw=False, strict_map_key=False)
    if data[0] == PLAIN:
        return msgpack.unpackb(data[1:], raw=False, strict_map_key=False)
    raise ValueError(f"unknown users document format {data[0]}")


def as_format_1(item):
    """`item` (as TypeDeserializer gives it: plain values, B as Binary) with a format-2
    profile spread out as format 1's attributes (stamps as text, `profile_version` as
    `version`); a format-1 item as it is."""
    profile = item.get("profile")
    if profile is None:
        return item
    data = getattr(profile, "value", profile)
    doc = document(data)
    stamps = [stamp_text(record) for record in doc["k"]]
    plain = {"stamps": {key: stamps[i] for i, keys in enumerate(doc.get("f", [])) for key in keys}}
    plain.update(doc.get("p", {}))
    if doc.get("t"):
        plain["traits"] = doc["t"]
    for short, name in (("l", "last_write"), ("e", "erased"), ("fl", "stamps_floor")):
        if doc.get(short) is not None:
            plain[name] = stamps[doc[short]]
    for short, name in (("c", "created_at"), ("u", "updated_at")):
        if doc.get(short) is not None:
            plain[name] = doc[short]
    if doc.get("o"):
        plain["set_once"] = {key: {"applies": applies,
                                   "writes": [{"stamp": stamps[i], "value": value} for i, value in writes]}
                             for key, (applies, writes) in doc["o"].items()}
    if doc.get("r"):
        plain["rejected_traits"] = [{"name": name, "reason": reason, "stamp": stamps[i]}
                                    for name, reason, i in doc["r"]]
    out = {k: v for k, v in item.items() if k not in ("profile", "profile_version")}
    if "profile_version" in item:
        out["version"] = item["profile_version"]
    out.update(plain)
    return out


def json_numbers(value):
    """DynamoDB's numbers (Decimal, as TypeDeserializer gives them) as JSON numbers, as
    the API answers them and format 2 stores them."""
    if isinstance(value, dict):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_numbers(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == int(value) else float(value)
    return value
