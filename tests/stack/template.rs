//! template.yaml, the code and the local stack agree on names, keys and settings, so
//! local and AWS cannot drift apart.

use crate::support::Stack;
use std::collections::BTreeSet;
use vibefollow_users::app::ports::Memberships;
use vibefollow_users::aws::dynamodb::{
    AudienceStore, EMAIL_INDEX, EMAIL_KEY, PARTITION_KEY, TTL_ATTRIBUTE,
};
use vibefollow_users::config::Resources;
use vibefollow_users::domain::idempotency::LOCK_MS;
use yaml_rust2::{Yaml, YamlLoader};

const TABLES: [&str; 4] = [
    "UsersTable",
    "IdempotencyTable",
    "ApiKeysTable",
    "RateLimitsTable",
];

fn template() -> Yaml {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn resource<'a>(template: &'a Yaml, name: &str) -> &'a Yaml {
    let resource = &template["Resources"][name];
    assert!(
        !resource.is_badvalue(),
        "template.yaml has no resource {name}"
    );
    &resource["Properties"]
}

/// A table's indexes as a stack without the upgrade flag has them: the users table's
/// are `!If [KeepLegacyEmailIndex, [new, legacy], [new]]`, read as that list.
fn declared_indexes(template: &Yaml, logical: &str) -> Vec<Yaml> {
    let declared = &resource(template, logical)["GlobalSecondaryIndexes"];
    match declared.as_vec() {
        Some(list) if list.first().and_then(Yaml::as_str) == Some("KeepLegacyEmailIndex") => {
            list[2].as_vec().cloned().unwrap_or_default()
        }
        Some(list) => list.clone(),
        None => Vec::new(),
    }
}

fn int(value: &Yaml) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {value:?}"))
}

#[test]
fn every_table_is_keyed_by_the_partition_key_the_code_uses() {
    let template = template();
    for table in TABLES {
        let props = resource(&template, table);
        let key_schema = props["KeySchema"].as_vec().unwrap();
        assert_eq!(key_schema.len(), 1, "{table}");
        assert_eq!(
            key_schema[0]["AttributeName"].as_str(),
            Some(PARTITION_KEY),
            "{table}"
        );
        assert_eq!(key_schema[0]["KeyType"].as_str(), Some("HASH"), "{table}");
        assert_eq!(
            props["BillingMode"].as_str(),
            Some("PAY_PER_REQUEST"),
            "{table}"
        );
    }
}

#[test]
fn audience_tables_are_keyed_and_indexed_as_the_code_reads_them() {
    let template = template();
    for table in ["AudiencesTable", "AudienceMembersTable"] {
        let keys: Vec<(&str, &str)> = resource(&template, table)["KeySchema"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["AttributeName"].as_str().unwrap(),
                    k["KeyType"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(keys, [(PARTITION_KEY, "HASH"), ("sk", "RANGE")], "{table}");
    }
    let due = declared_indexes(&template, "AudienceMembersTable");
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0]["IndexName"].as_str(),
        Some(vibefollow_users::aws::dynamodb::DUE_INDEX)
    );
    let users = declared_indexes(&template, "UsersTable");
    for index in [
        vibefollow_users::aws::dynamodb::WORKSPACE_USERS_INDEX,
        vibefollow_users::aws::dynamodb::UNSHARDED_USERS_INDEX,
    ] {
        assert!(users.iter().any(|i| i["IndexName"].as_str() == Some(index)));
    }
}

#[test]
fn users_table_has_the_email_index_the_code_queries() {
    let template = template();
    let indexes = declared_indexes(&template, "UsersTable");
    let index = indexes
        .iter()
        .find(|i| i["IndexName"].as_str() == Some(EMAIL_INDEX))
        .expect("email index");
    assert_eq!(
        index["KeySchema"][0]["AttributeName"].as_str(),
        Some(EMAIL_KEY)
    );
    // The lookup pages in external_user_id order and reads the items by key.
    assert_eq!(
        index["KeySchema"][1]["AttributeName"].as_str(),
        Some(PARTITION_KEY)
    );
    assert_eq!(
        index["Projection"]["ProjectionType"].as_str(),
        Some("KEYS_ONLY")
    );
}

#[test]
fn expiring_tables_use_the_code_ttl_attribute() {
    let template = template();
    for table in [
        "IdempotencyTable",
        "RateLimitsTable",
        "UsersTable",
        "AudienceMembersTable",
        "WebhooksTable",
    ] {
        let ttl = &resource(&template, table)["TimeToLiveSpecification"];
        assert_eq!(
            ttl["AttributeName"].as_str(),
            Some(TTL_ATTRIBUTE),
            "{table}"
        );
        assert_eq!(ttl["Enabled"].as_bool(), Some(true), "{table}");
    }
}

#[test]
fn functions_get_exactly_the_variables_the_code_reads() {
    let template = template();
    let variables = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_hash()
        .unwrap();
    let names: BTreeSet<&str> = variables.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(names, Resources::ENV_VARS.into_iter().collect());
    // The local runs' switches (webhooks to loopback, compressed time) are never
    // deployed.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml"))
        .expect("template.yaml");
    for local_only in ["WEBHOOK_ALLOW_LOCAL", "WEBHOOK_TIME_FACTOR"] {
        assert!(!text.contains(local_only), "{local_only}");
    }
}

#[test]
fn queue_settings_match_the_consumer_and_the_idempotency_lock() {
    let template = template();
    let queue = resource(&template, "UpsertQueue");
    let consumer_timeout = int(&resource(&template, "ConsumerFunction")["Timeout"]);
    assert!(
        int(&queue["VisibilityTimeout"]) >= 6 * consumer_timeout,
        "visibility timeout < 6x consumer timeout"
    );
    assert!(int(&queue["RedrivePolicy"]["maxReceiveCount"]) >= 5);
    // A live request must never lose its Idempotency-Key lock.
    assert!(int(&resource(&template, "ApiFunction")["Timeout"]) * 1000 < LOCK_MS);
    let events = &resource(&template, "ConsumerFunction")["Events"]["Upserts"]["Properties"];
    let response_types = events["FunctionResponseTypes"].as_vec().unwrap();
    assert_eq!(response_types[0].as_str(), Some("ReportBatchItemFailures"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn local_tables_match_the_template() {
    let stack = Stack::new().await;
    let template = template();
    let names = [
        ("UsersTable", &stack.resources.users_table),
        ("IdempotencyTable", &stack.resources.idempotency_table),
        ("ApiKeysTable", &stack.resources.api_keys_table),
        ("RateLimitsTable", &stack.resources.rate_limits_table),
    ];
    for (logical, name) in names {
        let table = stack
            .dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .unwrap();
        let table = table.table().unwrap();
        let key: Vec<&str> = table
            .key_schema()
            .iter()
            .map(|k| k.attribute_name())
            .collect();
        assert_eq!(key, [PARTITION_KEY], "{logical}");
        let indexes: Vec<&str> = table
            .global_secondary_indexes()
            .iter()
            .filter_map(|i| i.index_name())
            .collect();
        let declared_yaml = declared_indexes(&template, logical);
        let declared: Vec<&str> = declared_yaml
            .iter()
            .filter_map(|i| i["IndexName"].as_str())
            .collect();
        assert_eq!(indexes, declared, "{logical}");
    }
    let users = stack
        .dynamodb
        .describe_table()
        .table_name(&stack.resources.users_table)
        .send()
        .await
        .unwrap();
    let stream = users.table().and_then(|t| t.stream_specification());
    assert_eq!(
        stream
            .and_then(|s| s.stream_view_type())
            .map(|v| v.as_str()),
        Some("NEW_AND_OLD_IMAGES"),
        "the users table streams old and new images"
    );
    let attributes = stack
        .sqs
        .get_queue_attributes()
        .queue_url(&stack.resources.upsert_queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&attributes[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy])
            .unwrap();
    let declared = int(&resource(&template, "UpsertQueue")["RedrivePolicy"]["maxReceiveCount"]);
    let local = &redrive["maxReceiveCount"];
    assert_eq!(
        local.as_i64().or_else(|| local.as_str()?.parse().ok()),
        Some(declared)
    );
}

#[test]
fn access_logs_record_the_route_key_never_the_raw_path() {
    // The raw path holds the external_user_id, often an email address in practice.
    let template = template();
    let format = resource(&template, "HttpApi")["AccessLogSettings"]["Format"]
        .as_str()
        .expect("an access log format");
    assert!(format.contains("$context.routeKey"), "{format}");
    for raw in [
        "$context.path",
        "$context.resourcePath",
        "$context.requestUri",
    ] {
        assert!(!format.contains(raw), "{format} logs {raw}");
    }
}

/// Every DynamoDB and SQS call the functions make, with the resource it names. moto
/// checks no IAM, so a call the policy does not allow would first fail on AWS: a new
/// call belongs here and in template.yaml together.
const CALLS: &[(&str, &str, &str)] = &[
    ("ApiFunction", "ApiKeysTable", "dynamodb:GetItem"), // ApiKeyStore::get, open_connection
    ("ApiFunction", "RateLimitsTable", "dynamodb:UpdateItem"), // RateLimitStore::take
    ("ApiFunction", "IdempotencyTable", "dynamodb:PutItem"), // claim
    ("ApiFunction", "IdempotencyTable", "dynamodb:UpdateItem"), // take_over, complete, reopen
    ("ApiFunction", "IdempotencyTable", "dynamodb:DeleteItem"), // release
    ("ApiFunction", "UsersTable", "dynamodb:GetItem"),   // UserStore::get
    ("ApiFunction", "UsersTable", "dynamodb:BatchGetItem"), // find_by_email → get_many
    (
        "ApiFunction",
        "UsersTable.Arn}/index/email-lookup",
        "dynamodb:Query",
    ), // find_by_email
    ("ApiFunction", "UpsertQueue", "sqs:SendMessage"), // UpsertQueue::send; SendMessageBatch (send_all) needs the same action
    ("ApiFunction", "UpsertQueue", "sqs:GetQueueAttributes"), // UpsertQueue::open_connection
    ("ConsumerFunction", "UsersTable", "dynamodb:BatchGetItem"), // get_many
    ("ConsumerFunction", "UsersTable", "dynamodb:GetItem"), // re-read after a conflict, open_connection
    ("ConsumerFunction", "UsersTable", "dynamodb:PutItem"), // UserStore::put
    ("ChangesFunction", "ChangeEventBus", "events:PutEvents"), // EventBus::put
    (
        "ChangesFunction",
        "UsersTable.StreamArn",
        "dynamodb:GetRecords",
    ), // the stream's event source mapping
    ("ChangesFunction", "ChangesFailureQueue", "sqs:SendMessage"), // its on-failure destination
    // The event source mappings poll with the function's role (SAM's managed policies
    // that granted these on every queue and stream are gone: see dev/check_iam.py).
    ("ConsumerFunction", "UpsertQueue", "sqs:ReceiveMessage"),
    ("ConsumerFunction", "UpsertQueue", "sqs:DeleteMessage"),
    ("ConsumerFunction", "UpsertQueue", "sqs:GetQueueAttributes"),
    (
        "ChangesFunction",
        "UsersTable.StreamArn",
        "dynamodb:GetShardIterator",
    ),
    (
        "ChangesFunction",
        "UsersTable.StreamArn",
        "dynamodb:DescribeStream",
    ),
    // Audiences: the api's definitions and reads…
    ("ApiFunction", "AudiencesTable", "dynamodb:Query"), // AudienceStore::list
    ("ApiFunction", "AudiencesTable", "dynamodb:GetItem"), // AudienceStore::get
    ("ApiFunction", "AudiencesTable", "dynamodb:UpdateItem"), // define, delete: the revision
    ("ApiFunction", "AudiencesTable", "dynamodb:PutItem"), // define
    ("ApiFunction", "AudiencesTable", "dynamodb:DeleteItem"), // delete
    ("ApiFunction", "AudienceMembersTable", "dynamodb:GetItem"), // standing
    ("ApiFunction", "AudienceMembersTable", "dynamodb:Query"), // members, count
    ("ApiFunction", "AudienceBuildQueue", "sqs:SendMessage"), // BuildQueue::send
    ("ApiFunction", "WebhooksTable", "dynamodb:Query"),  // WebhookStore::endpoints
    ("ApiFunction", "WebhooksTable", "dynamodb:GetItem"), // WebhookStore::endpoint
    ("ApiFunction", "WebhooksTable", "dynamodb:UpdateItem"), // replace, rotate; the count
    ("ApiFunction", "WebhooksTable", "dynamodb:PutItem"), // create
    ("ApiFunction", "WebhooksTable", "dynamodb:DeleteItem"), // delete
    // …and the audiences function's evaluations.
    ("AudiencesFunction", "UsersTable", "dynamodb:GetItem"), // re-read after a conflict, tick
    ("AudiencesFunction", "UsersTable", "dynamodb:BatchGetItem"), // WorkspaceUsers::page
    (
        "AudiencesFunction",
        "UsersTable.Arn}/index/workspace-shard-users",
        "dynamodb:Query",
    ), // WorkspaceUsers::page
    (
        "AudiencesFunction",
        "UsersTable.Arn}/index/workspace-users",
        "dynamodb:Query",
    ), // WorkspaceUsers::page: users from before the shards
    ("AudiencesFunction", "AudiencesTable", "dynamodb:Query"), // list
    ("AudiencesFunction", "AudiencesTable", "dynamodb:UpdateItem"), // record_build
    ("AudiencesFunction", "AudiencesTable", "dynamodb:GetItem"), // revision
    (
        "AudiencesFunction",
        "AudienceMembersTable",
        "dynamodb:GetItem",
    ), // standing
    (
        "AudiencesFunction",
        "AudienceMembersTable",
        "dynamodb:PutItem",
    ), // commit, apply
    (
        "AudiencesFunction",
        "AudienceMembersTable",
        "dynamodb:DeleteItem",
    ), // drop_members
    (
        "AudiencesFunction",
        "AudienceMembersTable",
        "dynamodb:UpdateItem",
    ), // clear_pending, drop_members
    (
        "AudiencesFunction",
        "AudienceMembersTable",
        "dynamodb:Query",
    ), // list entries (drop)
    (
        "AudiencesFunction",
        "AudienceMembersTable.Arn}/index/due",
        "dynamodb:Query",
    ), // due
    ("AudiencesFunction", "AudienceBuildQueue", "sqs:SendMessage"), // the next task
    (
        "AudiencesFunction",
        "AudienceBuildQueue",
        "sqs:ReceiveMessage",
    ),
    (
        "AudiencesFunction",
        "AudienceBuildQueue",
        "sqs:DeleteMessage",
    ),
    ("AudiencesFunction", "AudienceTimeQueue", "sqs:SendMessage"), // TimeTasks::send_time
    (
        "AudiencesFunction",
        "AudienceTimeQueue",
        "sqs:ReceiveMessage",
    ),
    ("AudiencesFunction", "AudienceRetryQueue", "sqs:SendMessage"), // ParkedUsers::park
    (
        "AudiencesFunction",
        "AudienceRetryQueue",
        "sqs:ReceiveMessage",
    ),
    (
        "AudiencesFunction",
        "AudienceRetryQueue",
        "sqs:DeleteMessage",
    ),
    ("AudiencesFunction", "ChangeEventBus", "events:PutEvents"), // membership events
    (
        "AudiencesFunction",
        "UsersTable.StreamArn",
        "dynamodb:GetRecords",
    ),
    (
        "AudiencesFunction",
        "AudienceStreamFailureQueue",
        "sqs:SendMessage",
    ), // the stream mapping's on-failure destination
    (
        "AudiencesFunction",
        "AudienceStreamFailureQueue",
        "sqs:ReceiveMessage",
    ),
    (
        "AudiencesFunction",
        "AudiencesFunctionLogGroup",
        "logs:PutLogEvents",
    ),
    // Each function writes its logs to its own log group only.
    ("ApiFunction", "ApiFunctionLogGroup", "logs:PutLogEvents"),
    (
        "ConsumerFunction",
        "ConsumerFunctionLogGroup",
        "logs:PutLogEvents",
    ),
    (
        "ChangesFunction",
        "ChangesFunctionLogGroup",
        "logs:PutLogEvents",
    ),
];

#[test]
fn function_policies_allow_every_call_the_code_makes() {
    let template = template();
    for (function, target, action) in CALLS {
        // Each function's own role: SAM attaches no managed policy to a role it is given.
        let role = format!("{function}Role");
        assert_eq!(
            resource(&template, function)["Role"].as_str(),
            Some(format!("{role}.Arn").as_str()),
            "{function} runs under its own role"
        );
        let statements = resource(&template, &role)["Policies"][0]["PolicyDocument"]["Statement"]
            .as_vec()
            .unwrap_or_else(|| panic!("{role} has no policy statements"));
        let allowed = statements.iter().any(|statement| {
            let names = |key: &str| statement[key].as_vec().cloned().unwrap_or_default();
            names("Action").iter().any(|a| a.as_str() == Some(action))
                && names("Resource").iter().any(|r| {
                    r.as_str()
                        .is_some_and(|r| r.trim_start_matches("${").starts_with(target))
                })
        });
        assert!(allowed, "{function} may not {action} on {target}");
    }
}

/// Query grants name only what each function's code queries (CALLS): the users table is
/// queried through its indexes alone, so no role may query the table itself (a Query on
/// a table's ARN pages through the table by key; one on an index's ARN, that index only).
/// dev/check_iam.py (make check) reads the queries from the code, table by table.
#[test]
fn query_grants_name_only_the_tables_and_indexes_the_code_queries() {
    let template = template();
    for function in [
        "ApiFunction",
        "ConsumerFunction",
        "ChangesFunction",
        "AudiencesFunction",
    ] {
        let queried: Vec<&str> = CALLS
            .iter()
            .filter(|(f, _, action)| *f == function && *action == "dynamodb:Query")
            .map(|(_, target, _)| *target)
            .collect();
        let role = format!("{function}Role");
        let statements = resource(&template, &role)["Policies"][0]["PolicyDocument"]["Statement"]
            .as_vec()
            .unwrap_or_else(|| panic!("{role} has no policy statements"));
        for statement in statements {
            let actions = statement["Action"].as_vec().cloned().unwrap_or_default();
            if !actions.iter().any(|a| a.as_str() == Some("dynamodb:Query")) {
                continue;
            }
            for granted in statement["Resource"].as_vec().cloned().unwrap_or_default() {
                // `!If [KeepLegacyEmailIndex, index, AWS::NoValue]`: the index that the
                // code being replaced during the upgrade queries.
                if granted[0].as_str() == Some("KeepLegacyEmailIndex") {
                    assert_eq!(
                        granted[1].as_str(),
                        Some("${UsersTable.Arn}/index/email-index"),
                        "{role}"
                    );
                    continue;
                }
                let text = granted
                    .as_str()
                    .unwrap_or_else(|| panic!("{role}: a Query resource {granted:?}"));
                let target = text.trim_start_matches("${");
                let target = target.strip_suffix(".Arn").unwrap_or(target);
                assert!(
                    queried.contains(&target),
                    "{role} may Query {text}, which its code never queries"
                );
            }
        }
    }
}

/// Every queue's event source mapping runs a bounded number of batches at once
/// (`ScalingConfig.MaximumConcurrency`, at least Lambda's lowest, 2): without one, a
/// backlog scales its function to the account's whole concurrency. A bound given as a
/// parameter holds at its default and at its lowest allowed value.
#[test]
fn every_queue_mapping_bounds_its_concurrency() {
    let template = template();
    let mut mappings = 0;
    for (name, declared) in template["Resources"].as_hash().unwrap() {
        if declared["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let name = name.as_str().unwrap();
        let Some(events) = declared["Properties"]["Events"].as_hash() else {
            continue;
        };
        for (event, source) in events {
            if source["Type"].as_str() != Some("SQS") {
                continue;
            }
            mappings += 1;
            let event = event.as_str().unwrap();
            let bound = &source["Properties"]["ScalingConfig"]["MaximumConcurrency"];
            let lowest = match bound {
                Yaml::Integer(n) => *n,
                Yaml::String(parameter) => {
                    let parameter = &template["Parameters"][parameter.as_str()];
                    assert!(!parameter.is_badvalue(), "{name}.{event}: {bound:?}");
                    assert!(int(&parameter["Default"]) >= 2, "{name}.{event}: {bound:?}");
                    int(&parameter["MinValue"])
                }
                _ => panic!("{name}.{event}: no ScalingConfig.MaximumConcurrency"),
            };
            assert!(lowest >= 2, "{name}.{event}: Lambda's lowest bound is 2");
        }
    }
    assert!(mappings >= 5, "only {mappings} queue mappings found");
}

/// The tick sends a time task per partition of the users due: the time queue's mapping
/// runs them all at once, so none waits for another.
#[test]
fn time_tasks_run_side_by_side() {
    let template = template();
    let time_moves = &resource(&template, "AudiencesFunction")["Events"]["TimeMoves"];
    assert!(
        int(&time_moves["Properties"]["ScalingConfig"]["MaximumConcurrency"])
            >= i64::from(<AudienceStore as Memberships>::DUE_SHARDS)
    );
}

/// A tick the schedule cannot hand to the function is retried at most until the next
/// tick replaces it, then kept in a dead-letter queue an alarm watches, not dropped unseen.
#[test]
fn a_tick_the_schedule_cannot_deliver_is_dead_lettered_and_alarmed() {
    let template = template();
    let tick = &resource(&template, "AudiencesFunction")["Events"]["Tick"];
    assert_eq!(tick["Type"].as_str(), Some("Schedule"));
    let tick_seconds: i64 = template["Globals"]["Function"]["Environment"]["Variables"]
        ["AUDIENCE_TICK_SECONDS"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("AUDIENCE_TICK_SECONDS");
    let retry = &tick["Properties"]["RetryPolicy"];
    assert!(int(&retry["MaximumEventAgeInSeconds"]) <= tick_seconds);
    assert!(int(&retry["MaximumRetryAttempts"]) >= 1);
    assert_eq!(
        tick["Properties"]["DeadLetterConfig"]["Arn"].as_str(),
        Some("AudienceTickDeadLetterQueue.Arn")
    );
    let alarmed = template["Resources"]
        .as_hash()
        .unwrap()
        .values()
        .any(|declared| {
            declared["Type"].as_str() == Some("AWS::CloudWatch::Alarm")
                && declared["Properties"]["Dimensions"][0]["Value"].as_str()
                    == Some("AudienceTickDeadLetterQueue.QueueName")
        });
    assert!(alarmed, "no alarm watches the tick's dead-letter queue");
}
