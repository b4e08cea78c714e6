"""template.yaml, read for the local stack: its resources with their local names, the
functions' environment, settings and event sources, the tables' keys and indexes. Local
and AWS share one schema."""
import re
from collections import namedtuple

import yaml

import capacity

from .settings import ACCOUNT, EMULATOR_URL, REGION, ROOT, STACK_NAME


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, …) as their long form."""


def _cfn_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template():
    with open(ROOT / "template.yaml") as f:
        return yaml.load(f, Loader=CfnLoader)


def resolve(value, names):
    """Resolves the intrinsic functions the local stack needs."""
    if isinstance(value, dict):
        if "Ref" in value:
            return names[value["Ref"]]
        if "Fn::Sub" in value:
            return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
        if "Fn::GetAtt" in value:
            resource, attribute = value["Fn::GetAtt"]
            return names[f"{resource}.{attribute}"]
        if "Fn::If" in value:
            return resolve(value["Fn::If"][2], names)  # local stack: not prod
        return {k: resolve(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    return value


def local_resources(template):
    """Tables and queues of the template, with their local names."""
    names = {"AWS::StackName": STACK_NAME, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
    # Parameters take their defaults, as a `sam deploy` without overrides would.
    names.update({name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()})
    tables, queues = {}, {}
    for logical, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            props = resource["Properties"]
            tables[logical] = props
            names[logical] = resolve(props["TableName"], names)
        elif kind == "AWS::Events::EventBus":
            bus = resolve(resource["Properties"]["Name"], names)
            names[logical] = bus
            names[f"{logical}.Arn"] = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}"
        elif kind == "AWS::SQS::Queue":
            props = resource["Properties"]
            queues[logical] = props
            queue_name = resolve(props["QueueName"], names)
            names[logical] = f"{EMULATOR_URL}/{ACCOUNT}/{queue_name}"
            names[f"{logical}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}"
            names[f"{logical}.QueueName"] = queue_name
    return names, tables, queues


def function_environment(template, names):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    return {k: resolve(v, names) for k, v in variables.items()}


def key_schemas(tables, names):
    """Table name → (partition key, sort key or None), for the DynamoDB limits."""
    schemas = {}
    for logical, props in tables.items():
        keys = {k["KeyType"]: k["AttributeName"] for k in props["KeySchema"]}
        schemas[names[logical]] = (keys["HASH"], keys.get("RANGE"))
    return schemas


def table_indexes(tables, names):
    """Table name → its global secondary indexes, for counting capacity units."""
    indexes = {}
    for logical, props in tables.items():
        table_keys = [k["AttributeName"] for k in props["KeySchema"]]
        indexes[names[logical]] = [capacity.Index(index, table_keys)
                                   for index in resolve(props.get("GlobalSecondaryIndexes", []), names)]
    return indexes


def function_settings(template, logical):
    """Timeout (s) and memory (MB) of a function of the template."""
    merged = dict(template["Globals"]["Function"], **template["Resources"][logical]["Properties"])
    return int(merged.get("Timeout", 3)), int(merged.get("MemorySize", 128))


# An event source of a function: `function` is its local name (the binary's), `event`
# the event's name in the template, `properties` resolved (ARNs, numbers as written).
EventSource = namedtuple("EventSource", "function event properties")


def event_sources(template, names, kind, function=None):
    """The event sources of type `kind` ("SQS", "DynamoDB", "Schedule") of every
    function of the template (or of `function` alone), in template order."""
    functions = ((resource["Metadata"]["BuildProperties"]["Binary"], resource)
                 for resource in template["Resources"].values() if resource["Type"] == "AWS::Serverless::Function")
    return [EventSource(name, event, resolve(spec.get("Properties", {}), names))
            for name, resource in functions if function in (None, name)
            for event, spec in resource["Properties"].get("Events", {}).items() if spec["Type"] == kind]


def queue_url(arn):
    """The local URL of a queue of the stack, from its ARN."""
    return f"{EMULATOR_URL}/{ACCOUNT}/{arn.rsplit(':', 1)[1]}"


def queue_arn(url):
    """The ARN of a queue of the stack, from its local URL."""
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{url.rsplit('/', 1)[1]}"
