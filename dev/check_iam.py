"""Least privilege as deployed: template.yaml translated offline by the SAM translator
(what CloudFormation runs at deploy time), then every IAM statement and attached
managed policy of the result checked. `make check` runs it; exit status 1 and one line
per finding when something is too broad.

    .venv-check/bin/python dev/check_iam.py [template.yaml]

Why translate first: SAM adds to the roles it generates AWS managed policies that the
template never names — AWSLambdaBasicExecutionRole (logs of every log group),
AWSXrayWriteOnlyAccess, and per event source AWSLambdaSQSQueueExecutionRole or
AWSLambdaDynamoDBExecutionRole, whose actions apply to every queue or stream of the
account (`Resource: "*"`). Only the translated template shows them.

Findings (Allow statements only; a Deny narrows access, whatever its scope):

- a managed policy attached to a role, user or group. ALLOWED_MANAGED_POLICIES is empty
  on purpose: even AWSLambdaBasicExecutionRole, the most harmless-looking one, lets a
  function create log groups and write into every log group of the account (forged log
  lines in another service's logs). The stack's roles hold inline statements instead,
  their logs permissions scoped to the function's own log group.
- `Resource: "*"`, unless every action of the statement is one AWS authorises on `*`
  only (RESOURCE_STAR_ONLY);
- a wildcard (`*` or `?`) in a resource that is not anchored on one of the stack's own
  resources: the text before the wildcard must contain a reference to a resource of the
  template (`${UsersTable.Arn}`, `${ChangeEventBus}`) followed by a separator (`/` or
  `:`), so `${UsersTable.Arn}/stream/*` passes (the table's own streams) while
  `${UsersTable.Arn}*` (every table whose name starts with it) and
  `arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*` do not;
- a resource built by an intrinsic the checker cannot read (Fn::ImportValue, …);
- `NotAction` or `NotResource` (allow everything but …), an action with a wildcard
  (`sqs:*`), and in a resource policy a principal `*` without a condition;
- `dynamodb:Query` on a table or index the code never queries. The queries are read
  from the code itself (`.query().table_name(&self.<field>)…[.index_name(INDEX)]` in
  src/, STORE_TABLES naming each store field's table): a Query on a table's ARN lets a
  role page through the table by key, one on an index ARN only that index, so a role
  whose code queries only an index gets that index alone. Both ways round: a query of
  the code that no role may make is a finding too (it would fail on AWS with
  AccessDenied, which moto never says).

A resource given as `!Ref` / `!GetAtt` of a resource of the template, or of a parameter
(an ARN the deployer names), is one resource and passes.
"""
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# AWS managed policies a role may carry. None: see the module's docstring.
ALLOWED_MANAGED_POLICIES = frozenset()

# Actions AWS authorises only on `Resource: "*"`: the Service Authorization Reference
# lists no resource type for them, so no ARN can narrow them. X-Ray's segment upload
# (Tracing: Active) is the only such need of the stack's functions.
RESOURCE_STAR_ONLY = frozenset({
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
})

# What the managed policies SAM attaches grant, for the finding's line.
KNOWN_MANAGED = {
    "AWSLambdaBasicExecutionRole": "logs:CreateLogGroup/CreateLogStream/PutLogEvents on every log group",
    "AWSXrayWriteOnlyAccess": "xray:PutTraceSegments/PutTelemetryRecords/GetSampling* on *",
    "AWSLambdaSQSQueueExecutionRole": "sqs:ReceiveMessage/DeleteMessage/GetQueueAttributes on every queue, and logs on every log group",
    "AWSLambdaDynamoDBExecutionRole": "dynamodb:DescribeStream/GetRecords/GetShardIterator/ListStreams on every stream, and logs on every log group",
    "AWSLambdaKinesisExecutionRole": "kinesis read on every stream, and logs on every log group",
    "AWSLambdaVPCAccessExecutionRole": "ec2 network interfaces on *, and logs on every log group",
}

# Fixed values for the translator's pseudo parameters: the checker looks at structure,
# never at a real account.
PSEUDO_PARAMETERS = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "check-iam",
    "AWS::URLSuffix": "amazonaws.com",
}

WILDCARD = re.compile(r"[*?]")
SUB_REFERENCE = re.compile(r"\$\{([^}!][^}]*)\}")

# The table behind each DynamoDB store's field, (store, field): a store is a file under
# src/aws/dynamodb (`users` for users.rs) or a folder there (`audiences` for
# audiences/*.rs); the field holds the name config::Resources reads from the environment
# variable the template sets to that table (Globals.Function.Environment).
STORE_TABLES = {
    ("users", "table"): "UsersTable",
    ("audiences", "audiences"): "AudiencesTable",
    ("audiences", "members"): "AudienceMembersTable",
    ("webhooks", "table"): "WebhooksTable",
    ("lanes", "table"): "WebhooksTable",
    ("delivery_log", "table"): "WebhooksTable",
}
# Indexes a role may query though the current code does not: the code being replaced
# during the email index upgrade (KeepLegacyEmailIndex) still queries the old one.
LEGACY_QUERIES = frozenset({("UsersTable", "email-index")})
# A DynamoDB Query as the stores write it, up to its `.send()`.
QUERY_START = re.compile(r"\.query\(\)\s*\.table_name\(")
# A query's chain, to its index (when it names one: a query whose index depends on a
# value is built in arms, one per index, and sent once) or else to its send.
QUERY_CALL = re.compile(r"\.query\(\)\s*\.table_name\(&?self\.(\w+)\)(.*?(?:\.index_name\([^)]*\)|\.send\(\)))", re.S)
INDEX_NAME = re.compile(r"\.index_name\((\w+|\"[^\"]*\")\)")
STR_CONST = re.compile(r"\bconst\s+(\w+)\s*:\s*&str\s*=\s*\"([^\"]*)\"")
# A Query resource: a table's ARN, or one of its indexes.
# (An index name with a wildcard, every index it matches, is never one the code queries.)
QUERY_TARGET = re.compile(r"^\$\{(\w+)\.Arn\}(?:/index/([\w.*?-]+))?$")


class ManagedPolicyNames(dict):
    """The translator asks for the ARN of a managed policy named in a function's
    `Policies` only when the map bundled with it lacks the name; answering with the
    conventional ARN keeps the translation offline (no iam:ListPolicies call)."""

    def get(self, name, default=None):
        return f"arn:aws:iam::aws:policy/{name}"


class OfflineLoader:
    def load(self):
        return ManagedPolicyNames()


def load_template(path):
    from samtranslator.yaml_helper import yaml_parse
    return yaml_parse(Path(path).read_text())


def translate(template):
    """The CloudFormation template SAM makes of `template` (a parsed SAM template)."""
    from boto3.session import Session
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.arn_generator import ArnGenerator
    from samtranslator.translator.translator import Translator

    template = copy.deepcopy(template)
    region = PSEUDO_PARAMETERS["AWS::Region"]
    if ArnGenerator.BOTO_SESSION_REGION_NAME is None:
        ArnGenerator.BOTO_SESSION_REGION_NAME = region
    # The translator accepts only S3 code locations; `sam build` / `sam deploy` replace
    # the local paths with uploads, and so does `sam validate` with a placeholder.
    for scope in [template.get("Globals", {}).get("Function", {})] + [
            r.get("Properties", {}) for r in template.get("Resources", {}).values()
            if r.get("Type") == "AWS::Serverless::Function"]:
        if isinstance(scope.get("CodeUri"), str) and not scope["CodeUri"].startswith("s3://"):
            scope["CodeUri"] = "s3://offline-check/code.zip"
    parameters = dict(PSEUDO_PARAMETERS)
    for name, declared in template.get("Parameters", {}).items():
        if "Default" in declared:
            parameters[name] = declared["Default"]
    # As `sam validate` does: the translator with a session that only names a region (it
    # makes no call) and the offline managed-policy map.
    translator = Translator(None, Parser(), boto_session=Session(region_name=region))
    try:
        return translator.translate(template, parameter_values=parameters,
                                    get_managed_policy_map=OfflineLoader().load)
    finally:
        translator.metrics.publish()  # to nowhere; unpublished metrics warn at exit


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def branches(value):
    """Every value an `Fn::If` may take (both branches, `AWS::NoValue` dropped)."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return [v for branch in (yes, no) for v in branches(branch)]
    if isinstance(value, dict) and value.get("Ref") == "AWS::NoValue":
        return []
    return [value]


def flat(values):
    """A policy element (string, list, `Fn::If` of either) as a flat list of values."""
    out = []
    for value in branches(values):
        if value is None:
            continue
        if isinstance(value, list):
            for item in value:
                out.extend(flat(item))
        else:
            out.append(value)
    return out


def shown(value):
    """A resource value as one readable string (intrinsics in `${…}` form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (name, argument), = value.items()
        if name == "Ref":
            return "${%s}" % argument
        if name == "Fn::GetAtt":
            return "${%s}" % ".".join(as_list(argument))
        if name == "Fn::Sub":
            return argument if isinstance(argument, str) else argument[0]
        if name == "Fn::Join":
            separator, parts = argument
            return separator.join(shown(p) for p in parts)
    return json.dumps(value, sort_keys=True)


def sub_text(value, resources):
    """A resource as a string in which `${X}` / `${X.Attr}` name what it refers to, or
    None when it is built by an intrinsic the checker does not read. Fn::Sub variables
    that are references become those references."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (name, argument), = value.items()
    if name in ("Ref", "Fn::GetAtt"):
        return shown(value)
    if name == "Fn::Sub":
        if isinstance(argument, str):
            return argument
        text, variables = argument
        for variable, bound in variables.items():
            inner = sub_text(bound, resources)
            if inner is None:
                return None
            text = text.replace("${%s}" % variable, inner)
        return text
    if name == "Fn::Join":
        separator, parts = argument
        texts = [sub_text(p, resources) for p in as_list(parts)]
        return None if None in texts else separator.join(texts)
    return None


def resource_problem(value, resources):
    """Why a statement's resource reaches beyond the stack's own resources, or None."""
    if isinstance(value, dict) and ("Ref" in value or "Fn::GetAtt" in value) and len(value) == 1:
        return None  # one resource of the stack, or an ARN the deployer names
    text = sub_text(value, resources)
    if text is None:
        return f"resource {shown(value)} cannot be checked offline"
    wildcard = WILDCARD.search(text)
    if not wildcard:
        return None
    before = text[:wildcard.start()]
    anchors = [m for m in SUB_REFERENCE.finditer(before)
               if m.group(1).split(".")[0] in resources]
    if anchors and re.search(r"[/:]", before[anchors[-1].end():]):
        return None
    if text == "*":
        return None  # reported by the caller, which knows the actions
    return f"resource {text} has a wildcard not under one of the stack's own resources"


def statement_findings(statement, resources, resource_policy):
    if statement.get("Effect") != "Allow":
        return []
    findings = []
    for key in ("NotAction", "NotResource"):
        if key in statement:
            findings.append(f"{key} allows everything but what it names")
    actions = [a for a in flat(statement.get("Action")) if isinstance(a, str)]
    for action in actions:
        if "*" in action or "?" in action:
            findings.append(f"action {action} is a wildcard")
    for value in flat(statement.get("Resource")):
        if value == "*":
            broad = sorted(set(actions) - RESOURCE_STAR_ONLY)
            if broad or not actions:
                findings.append(f'Resource "*" for {", ".join(broad) or "no action"}')
            continue
        problem = resource_problem(value, resources)
        if problem:
            findings.append(problem)
    if resource_policy:
        principal = statement.get("Principal")
        public = principal == "*" or (isinstance(principal, dict) and "*" in flat(principal.get("AWS")))
        if public and not statement.get("Condition"):
            findings.append("principal * without a condition")
    sid = statement.get("Sid")
    return [f"statement {sid}: {f}" if sid else f for f in findings]


def document_statements(document):
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return []
    if not isinstance(document, dict):
        return []
    return [s for s in flat(document.get("Statement")) if isinstance(s, dict)]


def managed_policy_name(arn):
    return shown(arn).rsplit("/", 1)[-1]


def findings(cfn):
    """Every finding of a translated (plain CloudFormation) template, as lines."""
    resources = set(cfn.get("Resources", {}))
    out = []
    for logical, resource in sorted(cfn.get("Resources", {}).items()):
        kind = resource.get("Type")
        props = resource.get("Properties", {}) or {}
        documents, resource_policy = [], False
        if kind in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
            for arn in flat(props.get("ManagedPolicyArns")):
                name = managed_policy_name(arn)
                if name not in ALLOWED_MANAGED_POLICIES:
                    grants = KNOWN_MANAGED.get(name, "an AWS-managed set of permissions")
                    out.append(f"{logical}: managed policy {shown(arn)} attached ({grants}); "
                               "use inline statements on the stack's own resources")
            for policy in flat(props.get("Policies")):
                if isinstance(policy, dict):
                    documents.append(policy.get("PolicyDocument"))
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append(props.get("PolicyDocument"))
        elif kind in ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy", "AWS::S3::BucketPolicy"):
            documents.append(props.get("PolicyDocument"))
            resource_policy = True
        elif kind == "AWS::Events::EventBusPolicy":
            documents.append({"Statement": props.get("Statement")})
            resource_policy = True
        elif kind == "AWS::Events::EventBus" and "Policy" in props:
            documents.append(props.get("Policy"))
            resource_policy = True
        for document in documents:
            for statement in document_statements(document):
                out.extend(f"{logical}: {f}"
                           for f in statement_findings(statement, resources, resource_policy))
    return out


def store_of(path):
    """The store a source file belongs to: its stem, or its folder under `dynamodb/`."""
    return path.parent.name if path.parent.parent.name == "dynamodb" else path.stem


def code_queries(source=ROOT / "src"):
    """Every (table, index or None) the code queries, from the Rust sources under
    `source`. A query of a store field STORE_TABLES does not name raises: the check must
    learn its table rather than pass it by. Index constants are a store's (any of its
    files)."""
    paths = sorted(Path(source).rglob("*.rs"))
    texts = {path: path.read_text() for path in paths}
    constants = {}
    for path, text in texts.items():
        constants.setdefault(store_of(path), {}).update(STR_CONST.findall(text))
    queried = set()
    for path, text in texts.items():
        calls = QUERY_CALL.findall(text)
        if len(calls) != len(QUERY_START.findall(text)):
            raise ValueError(f"{path}: a Query whose table is not `&self.<field>` (or that is "
                             "never sent): dev/check_iam.py cannot tell which table it reads")
        store = store_of(path)
        for field, chain in calls:
            table = STORE_TABLES.get((store, field))
            if table is None:
                raise ValueError(f"{path}: a Query of self.{field}, whose table STORE_TABLES "
                                 "(dev/check_iam.py) does not name")
            index = INDEX_NAME.search(chain)
            if index is None:
                queried.add((table, None))
                continue
            name = index.group(1)
            if name.startswith('"'):
                queried.add((table, name.strip('"')))
            elif name in constants[store]:
                queried.add((table, constants[store][name]))
            else:
                raise ValueError(f"{path}: index {name} is not a string constant of its store")
    return queried


def query_target(value, resources):
    """(table, index or None) of a Query statement's resource, or None if it is neither
    a table's ARN nor one of its indexes."""
    text = sub_text(value, resources)
    match = QUERY_TARGET.match(text or "")
    return (match.group(1), match.group(2)) if match else None


def shown_target(target):
    table, index = target
    return f"{table} itself" if index is None else f"{table} index {index}"


def query_findings(cfn, queried):
    """Query grants the code does not need, and queries of the code no role may make."""
    resources = set(cfn.get("Resources", {}))
    out, granted = [], set()
    for logical, resource in sorted(cfn.get("Resources", {}).items()):
        if resource.get("Type") != "AWS::IAM::Role":
            continue
        for policy in flat((resource.get("Properties") or {}).get("Policies")):
            if not isinstance(policy, dict):
                continue
            for statement in document_statements(policy.get("PolicyDocument")):
                if statement.get("Effect") != "Allow" or "dynamodb:Query" not in flat(statement.get("Action")):
                    continue
                for value in flat(statement.get("Resource")):
                    target = query_target(value, resources)
                    if target is None:
                        continue  # not a table of the stack: the rules above judge it
                    granted.add(target)
                    if target not in queried and target not in LEGACY_QUERIES:
                        code = ", ".join(sorted(shown_target(q) for q in queried if q[0] == target[0]))
                        out.append(f"{logical}: dynamodb:Query on {shown_target(target)}, which the code "
                                   f"never queries (it queries: {code or 'nothing of that table'})")
    for target in sorted(queried - granted, key=str):
        out.append(f"the code queries {shown_target(target)}, but no role may (AccessDenied on AWS)")
    return out


def check(path, source=ROOT / "src"):
    cfn = translate(load_template(path))
    return findings(cfn) + query_findings(cfn, code_queries(source))


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "template.yaml"
    try:
        found = check(path)
    except ImportError as e:
        print(f"check_iam: {e}: run it with .venv-check/bin/python (make check installs it)",
              file=sys.stderr)
        return 2
    except ValueError as e:  # the code's queries could not be read
        print(f"check_iam: {e}", file=sys.stderr)
        return 2
    for line in found:
        print(f"{path.name}: {line}")
    if found:
        print(f"check_iam: {len(found)} finding(s): IAM broader than the stack's own resources "
              "or than the code's queries, or a query no role may make", file=sys.stderr)
        return 1
    print(f"check_iam: {path.name}: every IAM statement names the stack's own resources, "
          "every Query grant a table or index the code queries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
