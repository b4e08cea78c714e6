use super::*;
use serde_json::json;

fn parse(body: Value) -> Result<WebhookDefinition, BodyError> {
    parse_webhook(body.to_string().as_bytes(), Reach::Public)
}

/// The (code, field) of each error of a refused body.
fn refused(body: Value, reach: Reach) -> Vec<(ErrorCode, String)> {
    refused_text(&body.to_string(), reach)
}

fn refused_text(body: &str, reach: Reach) -> Vec<(ErrorCode, String)> {
    match parse_webhook(body.as_bytes(), reach) {
        Err(BodyError::Invalid(errors)) => errors
            .into_iter()
            .map(|e| (e.code, e.field.unwrap_or_default()))
            .collect(),
        other => panic!("refused, not {other:?}"),
    }
}

fn url_refused(url: &str, reach: Reach) -> Vec<(ErrorCode, String)> {
    refused(json!({"url": url, "events": ["user.changed"]}), reach)
}

/// Each of `urls` is refused with `invalid_format` on `url`, and nothing else.
fn assert_invalid_urls(urls: &[&str], reach: Reach) {
    for url in urls {
        assert_eq!(
            url_refused(url, reach),
            [(ErrorCode::InvalidFormat, "url".to_owned())],
            "{url}"
        );
    }
}

#[test]
fn a_full_definition_is_read_with_each_event_once() {
    let webhook = parse(json!({
        "url": "https://hooks.example.com/vibefollow?team=1",
        "events": ["audience.exited", "audience.entered", "audience.entered"],
        "audiences": ["trial-ending", "churn_risk"],
        "include": ["profile"],
    }))
    .unwrap();
    assert_eq!(
        webhook.url.as_str(),
        "https://hooks.example.com/vibefollow?team=1"
    );
    assert_eq!(
        webhook.events.into_iter().collect::<Vec<_>>(),
        [EventType::AudienceEntered, EventType::AudienceExited]
    );
    assert_eq!(
        webhook.audiences.unwrap().into_iter().collect::<Vec<_>>(),
        ["churn_risk", "trial-ending"]
    );
    assert!(webhook.include_profile);
}

#[test]
fn the_least_definition_includes_nothing_and_every_audience() {
    let webhook =
        parse(json!({"url": "https://93.184.215.14:8443/h", "events": ["user.deleted"]})).unwrap();
    assert_eq!(webhook.audiences, None);
    assert!(!webhook.include_profile);
    let same =
        parse(json!({"events": ["user.deleted"], "url": "https://93.184.215.14:8443/h"})).unwrap();
    assert_eq!(
        webhook.body_hash, same.body_hash,
        "the hash ignores member order"
    );
}

#[test]
fn each_bad_member_is_refused_at_its_path_in_body_order() {
    assert_eq!(
        refused_text(
            r#"{"events": [], "url": 5, "audiences": "all", "include": ["email", 3], "retries": 2}"#,
            Reach::Public
        ),
        [
            (ErrorCode::Empty, "events".into()),
            (ErrorCode::InvalidType, "url".into()),
            (ErrorCode::InvalidType, "audiences".into()),
            (ErrorCode::InvalidFormat, "include[0]".into()),
            (ErrorCode::InvalidType, "include[1]".into()),
            (ErrorCode::UnknownField, "retries".into()),
        ]
    );
    assert_eq!(
        refused(
            json!({"url": "https://a.example", "events": "all"}),
            Reach::Public
        ),
        [(ErrorCode::InvalidType, "events".into())],
        "a wrong type is one error, not also an empty list"
    );
    assert_eq!(
        refused(
            json!({"url": "https://a.example", "events": ["audience.entered"], "audiences": []}),
            Reach::Public
        ),
        [(ErrorCode::Empty, "audiences".into())],
        "no audience is no audience event: absent is all of them"
    );
    assert_eq!(
        refused(json!({}), Reach::Public),
        [
            (ErrorCode::Required, "url".into()),
            (ErrorCode::Required, "events".into())
        ]
    );
    assert_eq!(
        refused(
            json!({"url": "https://a.example", "events": ["user.changed", "user.created"], "audiences": ["ok", "no spaces"]}),
            Reach::Public
        ),
        // `json!` writes members by name: audiences first.
        [
            (ErrorCode::InvalidFormat, "audiences[1]".into()),
            (ErrorCode::InvalidFormat, "events[1]".into()),
        ]
    );
    let many: Vec<String> = (0..=MAX_WEBHOOK_AUDIENCES)
        .map(|i| format!("a{i}"))
        .collect();
    assert_eq!(
        refused(
            json!({"url": "https://a.example", "events": ["audience.entered"], "audiences": many}),
            Reach::Public
        ),
        [(ErrorCode::TooMany, "audiences".into())]
    );
}

#[test]
fn a_target_is_https_without_credentials_within_its_bound() {
    assert_invalid_urls(
        &[
            "http://hooks.example.com/h",
            "ftp://hooks.example.com/h",
            "hooks.example.com/h",
            "https://user:pass@hooks.example.com/h",
            "https://user@hooks.example.com/h",
            "",
        ],
        Reach::Public,
    );
    let long = format!("https://a.example/{}", "x".repeat(MAX_URL_BYTES));
    assert_eq!(
        url_refused(&long, Reach::Public),
        [(ErrorCode::TooLong, "url".into())]
    );
    // Within the bound as sent, past it as stored: each space is written `%20`.
    let spaced = format!("https://a.example/{}x", " ".repeat(700));
    assert!(spaced.len() <= MAX_URL_BYTES);
    assert_eq!(
        url_refused(&spaced, Reach::Public),
        [(ErrorCode::TooLong, "url".into())]
    );
}

#[test]
fn a_literal_address_in_a_refused_range_is_refused_however_it_is_spelled() {
    assert_invalid_urls(
        &[
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:169.254.169.254]/",
            "https://2852039166/",
            "https://0xA9FEA9FE/",
            "https://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
            "https://10.0.0.1/",
            "https://[::1]/",
            "https://0/",
        ],
        Reach::Public,
    );
}

#[test]
fn the_local_switch_allows_http_to_loopback_only() {
    for url in [
        "http://127.0.0.1:9911/hooks",
        "http://[::1]:9911/",
        "https://127.0.0.1/",
    ] {
        assert!(
            parse_webhook(
                json!({"url": url, "events": ["user.changed"]})
                    .to_string()
                    .as_bytes(),
                Reach::PublicAndLoopback
            )
            .is_ok(),
            "{url}"
        );
        assert!(
            !url_refused(url, Reach::Public).is_empty(),
            "{url} without the switch"
        );
    }
    assert_invalid_urls(
        &[
            "http://hooks.example.com/",
            "http://10.0.0.1/",
            "http://localhost:9911/",
        ],
        Reach::PublicAndLoopback,
    );
}

#[test]
fn a_user_change_tells_which_fields_changed_never_their_values() {
    let detail = json!({
        "id": "e1", "workspace_id": "ws", "external_user_id": "u1", "version": 3,
        "stamp": {"accepted_at": "2027-01-15T08:00:00.000Z", "request_id": "r1",
                  "timestamp": "2027-01-15T07:59:00.000Z"},
        "changed": {"email": {"old": "a@b.io", "new": "c@d.io"}, "plan": {"new": "pro"}},
    });
    let event = webhook_event("User Changed", &detail).unwrap();
    assert_eq!(event.event_type, EventType::UserChanged);
    assert_eq!(event.user_version, 3);
    assert_eq!(
        (event.event_id.as_str(), event.workspace_id.as_str()),
        ("e1", "ws")
    );
    assert_eq!(
        event.timestamp, "2027-01-15T07:59:00.000Z",
        "the source's time"
    );
    assert_eq!(
        event.data,
        json!({"external_user_id": "u1", "version": 3, "stamp": detail["stamp"],
               "changed": ["email", "plan"]})
    );
    assert!(!event.data.to_string().contains("@"), "no email");
    assert!(!event.data.to_string().contains("pro\""), "no value");
}

#[test]
fn an_audience_move_carries_its_audience_reason_and_moment() {
    let detail = json!({
        "id": "m1", "workspace_id": "ws", "audience_id": "trial-ending",
        "external_user_id": "u1", "user_version": 4, "at": "2027-01-15T08:00:00.000Z",
        "reason": "time",
    });
    let event = webhook_event("Audience Exited", &detail).unwrap();
    assert_eq!(event.event_type, EventType::AudienceExited);
    assert_eq!(
        event.user_version, 4,
        "a move is ordered by the user's version"
    );
    assert_eq!(event.audience_id.as_deref(), Some("trial-ending"));
    assert_eq!(event.timestamp, "2027-01-15T08:00:00.000Z");
    assert_eq!(
        event.data,
        json!({"external_user_id": "u1", "audience_id": "trial-ending", "user_version": 4,
               "reason": "time", "at": "2027-01-15T08:00:00.000Z"})
    );
    let deleted = json!({"id": "d1", "workspace_id": "ws", "external_user_id": "u1",
                         "version": 5, "stamp": {"accepted_at": "2027-01-15T08:00:00.000Z"}});
    let event = webhook_event("User Deleted", &deleted).unwrap();
    assert_eq!(
        event.timestamp, "2027-01-15T08:00:00.000Z",
        "acceptance without a source time"
    );
    assert_eq!(webhook_event("Webhook Disabled", &deleted), None);
    assert_eq!(
        webhook_event("Audience Entered", &deleted),
        None,
        "no audience named"
    );
}

#[test]
fn a_body_moved_to_another_slot_carries_that_slot_s_sequence_and_nothing_else_changes() {
    let data = json!({"external_user_id": "u1", "version": 3});
    let body = delivery_body(
        EventType::UserChanged,
        "2027-01-15T08:00:00.000Z",
        "crm",
        7,
        &data,
    );
    let moved: Value = serde_json::from_str(&with_sequence(&body, 9).unwrap()).unwrap();
    let mut expected: Value = serde_json::from_str(&body).unwrap();
    expected["sequence"] = json!(9);
    assert_eq!(moved, expected);
    assert_eq!(with_sequence("not json", 9), None);
    assert_eq!(with_sequence("{}", 9), None, "not a delivery body");
}

#[test]
fn a_disabling_is_announced_without_a_user_under_one_id_however_often() {
    let event = disabled_event("ws1", "crm", DisabledReason::Gone, 1_800_000_000_123);
    assert_eq!(event.event_type, EventType::WebhookDisabled);
    assert_eq!(event.external_user_id, ENDPOINT_LANE);
    assert_eq!(event.audience_id, None);
    assert_eq!(event.timestamp, "2027-01-15T08:00:00.123Z");
    assert_eq!(
        event.data,
        json!({"webhook_id": "crm", "reason": "gone", "disabled_at": "2027-01-15T08:00:00.123Z"})
    );
    assert_eq!(
        event,
        disabled_event("ws1", "crm", DisabledReason::Gone, 1_800_000_000_123),
        "announced again, the same event"
    );
    assert_ne!(
        event.event_id,
        disabled_event("ws1", "crm", DisabledReason::Gone, 1_800_000_000_124).event_id,
        "a later disabling is another event"
    );
}
