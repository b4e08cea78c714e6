"""dev/check_iam.py: what it finds in a template as SAM expands it, and what it lets pass.

Needs the SAM translator, installed in .venv-check: `make check` runs these tests
there; under `make test` (.venv, no translator) they are skipped."""
import contextlib
import copy
import io
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_iam  # noqa: E402

try:
    import samtranslator  # noqa: F401
    HAVE_TRANSLATOR = True
except ImportError:
    HAVE_TRANSLATOR = False

ROOT = Path(__file__).resolve().parent.parent


def minimal_sam(function_properties, resources=None):
    """A SAM template with one function (and a queue and a table to point at)."""
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"}}},
            "Fn": {"Type": "AWS::Serverless::Function", "Properties": dict(
                {"CodeUri": ".", "Handler": "bootstrap", "Runtime": "provided.al2023"},
                **function_properties)},
        },
    }
    template["Resources"].update(resources or {})
    return template


def role(statements, managed=None):
    properties = {
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole"}]},
        "Policies": [{"PolicyName": "fn", "PolicyDocument": {
            "Version": "2012-10-17", "Statement": statements}}],
    }
    if managed:
        properties["ManagedPolicyArns"] = managed
    return {"Type": "AWS::IAM::Role", "Properties": properties}


def with_role(statements, managed=None):
    return minimal_sam({"Role": {"Fn::GetAtt": ["FnRole", "Arn"]}},
                       {"FnRole": role(statements, managed)})


def allow(action, resource):
    return {"Effect": "Allow", "Action": action, "Resource": resource}


QUEUE_ARN = {"Fn::GetAtt": ["Queue", "Arn"]}


@unittest.skipUnless(HAVE_TRANSLATOR, "the SAM translator is in .venv-check (make check)")
class CheckIam(unittest.TestCase):
    def findings(self, template):
        return check_iam.findings(check_iam.translate(template))

    def test_the_project_template_passes(self):
        self.assertEqual(check_iam.check(ROOT / "template.yaml"), [])

    def test_a_star_statement_in_the_project_template_fails(self):
        template = check_iam.load_template(ROOT / "template.yaml")
        statements = (template["Resources"]["ApiFunctionRole"]["Properties"]["Policies"][0]
                      ["PolicyDocument"]["Statement"])
        statements.append(allow(["sqs:SendMessage"], "*"))
        found = self.findings(template)
        self.assertEqual(len(found), 1, found)
        self.assertIn("ApiFunctionRole", found[0])
        self.assertIn('Resource "*" for sqs:SendMessage', found[0])

    def test_sam_generated_roles_carry_managed_policies(self):
        # What the template looked like before: Policies on the function, SAM's role.
        template = minimal_sam({
            "Tracing": "Active",
            "Policies": [{"Statement": [allow(["sqs:SendMessage"], [QUEUE_ARN])]}],
            "Events": {"Q": {"Type": "SQS", "Properties": {"Queue": QUEUE_ARN}},
                       "S": {"Type": "DynamoDB", "Properties": {
                           "Stream": {"Fn::GetAtt": ["Table", "StreamArn"]},
                           "StartingPosition": "TRIM_HORIZON"}}},
        })
        found = "\n".join(self.findings(template))
        for name in ("AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess",
                     "AWSLambdaSQSQueueExecutionRole", "AWSLambdaDynamoDBExecutionRole"):
            self.assertIn(name, found)

    def test_a_declared_role_with_scoped_statements_passes(self):
        template = with_role([
            allow(["sqs:ReceiveMessage", "sqs:DeleteMessage"], [QUEUE_ARN]),
            allow(["dynamodb:ListStreams"], {"Fn::Sub": "${Table.Arn}/stream/*"}),
            allow(["logs:PutLogEvents"], {"Fn::Join": ["", [{"Fn::GetAtt": ["Table", "Arn"]}, "/x:*"]]}),
            {"Effect": "Deny", "Action": "*", "Resource": "*"},
        ])
        self.assertEqual(self.findings(template), [])

    def test_managed_policies_fail_even_on_a_declared_role(self):
        arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        found = self.findings(with_role([allow(["sqs:SendMessage"], [QUEUE_ARN])], [arn]))
        self.assertEqual(len(found), 1, found)
        self.assertIn(arn, found[0])

    def test_xray_alone_may_use_star(self):
        xray = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
        self.assertEqual(self.findings(with_role([allow(xray, "*")])), [])
        found = self.findings(with_role([allow(xray + ["logs:PutLogEvents"], "*")]))
        self.assertEqual(len(found), 1, found)
        self.assertIn('Resource "*" for logs:PutLogEvents', found[0])

    def test_wildcards_must_stay_under_a_resource_of_the_stack(self):
        broad = [
            {"Fn::Sub": "${Table.Arn}*"},  # every table whose name starts with this one's
            {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"},
            {"Fn::Sub": "arn:aws:dynamodb:*:*:table/${AWS::StackName}-*"},
            "arn:aws:sqs:us-east-1:123456789012:*",
            {"Fn::If": ["Never", QUEUE_ARN, "arn:aws:sqs:*:*:*"]},
        ]
        template = with_role([allow(["sqs:SendMessage"], [r]) for r in broad])
        template["Conditions"] = {"Never": {"Fn::Equals": ["a", "b"]}}
        found = self.findings(template)
        self.assertEqual(len(found), len(broad), found)

    def test_not_action_action_wildcards_and_public_principals_fail(self):
        template = with_role([
            {"Effect": "Allow", "NotAction": "iam:*", "Resource": [QUEUE_ARN]},
            allow("sqs:*", [QUEUE_ARN]),
        ])
        template["Resources"]["QueuePolicy"] = {"Type": "AWS::SQS::QueuePolicy", "Properties": {
            "Queues": [{"Ref": "Queue"}],
            "PolicyDocument": {"Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": QUEUE_ARN},
                {"Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": QUEUE_ARN,
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            ]}}}
        found = self.findings(template)
        self.assertEqual(len(found), 3, found)
        self.assertTrue(any("NotAction" in f for f in found))
        self.assertTrue(any("action sqs:* is a wildcard" in f for f in found))
        self.assertTrue(any("QueuePolicy: principal *" in f for f in found))

    def test_the_command_exits_1_with_one_line_per_finding(self):
        template = check_iam.load_template(ROOT / "template.yaml")
        bad = copy.deepcopy(template)
        (bad["Resources"]["ConsumerFunctionRole"]["Properties"]["Policies"][0]
         ["PolicyDocument"]["Statement"]).append(allow(["dynamodb:PutItem", "sqs:SendMessage"], "*"))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "template.json"
            path.write_text(json.dumps(bad))  # JSON is YAML: the loader reads it as is
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = check_iam.main(["check_iam.py", str(path)])
        self.assertEqual(status, 1)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("template.json: ConsumerFunctionRole: "), lines)


# Rust as the stores write their queries (src/aws/dynamodb/*.rs).
USERS_RS = """
pub const EMAIL_INDEX: &str = "email-lookup";
async fn find(&self) {
    let out = self
        .client
        .query()
        .table_name(&self.table)
        .index_name(EMAIL_INDEX)
        .key_condition_expression("email_key = :k")
        .send()
        .await?;
}
"""
AUDIENCES_RS = """
async fn list(&self) {
    let out = self.client.query().table_name(&self.audiences)
        .key_condition_expression("pk = :pk").send().await?;
}
"""


class CodeQueries(unittest.TestCase):
    """What the checker reads of the code: runs without the translator."""

    def queries(self, files):
        with tempfile.TemporaryDirectory() as folder:
            for name, text in files.items():
                path = Path(folder) / "aws" / "dynamodb" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            return check_iam.code_queries(folder)

    def test_tables_and_indexes_are_read_from_the_stores(self):
        self.assertEqual(self.queries({"users.rs": USERS_RS, "audiences.rs": AUDIENCES_RS}),
                         {("UsersTable", "email-lookup"), ("AudiencesTable", None)})

    def test_a_store_may_be_a_folder_whose_files_share_its_constants(self):
        constants = 'pub const DUE_INDEX: &str = "due";\n'
        split = AUDIENCES_RS.replace("&self.audiences", "&self.members").replace(
            '.key_condition_expression', '.index_name(DUE_INDEX).key_condition_expression')
        files = {"audiences/mod.rs": constants, "audiences/memberships.rs": split}
        self.assertEqual(self.queries(files), {("AudienceMembersTable", "due")})

    def test_a_query_built_in_arms_names_each_arms_index(self):
        arms = '''
pub const OLD_INDEX: &str = "old";
pub const NEW_INDEX: &str = "new";
async fn page(&self) {
    let query = match listing {
        Old => self.client.query().table_name(&self.table).index_name(OLD_INDEX),
        New => self.client.query().table_name(&self.table).index_name(NEW_INDEX),
    };
    let out = query.key_condition_expression("#k = :k").send().await?;
}
'''
        self.assertEqual(self.queries({"users/mod.rs": arms}), {("UsersTable", "old"), ("UsersTable", "new")})

    def test_the_projects_queries(self):
        self.assertEqual(check_iam.code_queries(), {
            ("UsersTable", "email-lookup"), ("UsersTable", "workspace-users"),
            ("UsersTable", "workspace-shard-users"),
            ("AudiencesTable", None), ("AudienceMembersTable", None), ("AudienceMembersTable", "due"),
            ("WebhooksTable", None)})

    def test_a_query_the_checker_cannot_place_is_an_error_not_a_pass(self):
        for name, text in (
                ("users.rs", USERS_RS.replace("&self.table", "&self.other")),  # an unknown field
                ("users.rs", USERS_RS.replace("&self.table", "table")),  # not a store field
                ("users.rs", USERS_RS.replace("EMAIL_INDEX)", "index)")),  # not a constant
                ("other.rs", USERS_RS)):  # a store STORE_TABLES does not know
            with self.subTest(text=text), self.assertRaises(ValueError):
                self.queries({name: text})


@unittest.skipUnless(HAVE_TRANSLATOR, "the SAM translator is in .venv-check (make check)")
class QueryGrants(unittest.TestCase):
    def setUp(self):
        self.template = check_iam.load_template(ROOT / "template.yaml")

    def statements(self, role):
        return self.template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]

    def findings(self):
        return check_iam.query_findings(check_iam.translate(self.template), check_iam.code_queries())

    def test_the_project_template_grants_exactly_the_code_queries(self):
        self.assertEqual(self.findings(), [])

    def test_a_query_on_a_table_the_code_reads_only_through_an_index_fails(self):
        # What the api's and the audiences function's roles held before: Query on the
        # users table itself, beside the index they do query.
        for role in ("ApiFunctionRole", "AudiencesFunctionRole"):
            with self.subTest(role=role):
                self.setUp()
                self.statements(role).append(allow(["dynamodb:Query"], [{"Fn::GetAtt": ["UsersTable", "Arn"]}]))
                found = self.findings()
                self.assertEqual(len(found), 1, found)
                self.assertTrue(found[0].startswith(f"{role}: dynamodb:Query on UsersTable itself"), found)

    def test_a_query_on_an_index_the_code_never_queries_or_on_every_index_fails(self):
        self.statements("ApiFunctionRole").append(allow(["dynamodb:Query"], [
            {"Fn::Sub": "${AudienceMembersTable.Arn}/index/by-name"},
            {"Fn::Sub": "${UsersTable.Arn}/index/*"}]))
        found = self.findings()
        self.assertEqual(len(found), 2, found)
        self.assertIn("ApiFunctionRole: dynamodb:Query on AudienceMembersTable index by-name", found[0])
        self.assertIn("ApiFunctionRole: dynamodb:Query on UsersTable index *", found[1])

    def test_a_query_of_the_code_no_role_may_make_fails(self):
        statements = self.statements("AudiencesFunctionRole")
        statements[:] = [s for s in statements
                         if s.get("Action") != ["dynamodb:Query"]
                         or {"Fn::Sub": "${UsersTable.Arn}/index/workspace-users"} not in s.get("Resource", [])]
        self.assertEqual(sorted(self.findings()), [
            "the code queries UsersTable index workspace-shard-users, but no role may (AccessDenied on AWS)",
            "the code queries UsersTable index workspace-users, but no role may (AccessDenied on AWS)"])

    def test_the_legacy_email_index_may_be_queried_during_the_upgrade(self):
        self.template["Parameters"]["KeepLegacyEmailIndex"]["Default"] = "true"
        self.assertEqual(self.findings(), [])


if __name__ == "__main__":
    unittest.main()
