//! `POST /api/v1/users` against the local stack: every row of the contract's error
//! table that a client can cause, and every Idempotency-Key rule.

use crate::support::{error_of, eventually, user_when, Stack, ALL_SCOPES};
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use vibefollow_users::app::ports::IdempotencyKeys;
use vibefollow_users::contract::body_hash;
use vibefollow_users::domain::auth::Scope;
use vibefollow_users::domain::idempotency::Claim;
use vibefollow_users::domain::rate_limit::burst;
use vibefollow_users::domain::Stamp;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn accepted_upsert_is_202_with_exact_body_and_request_id() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let response = stack
        .post(
            &key,
            &json!({"external_user_id": "usr_42", "email": "jane@acme.io"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"data":{"accepted":true}}"#
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn unparseable_or_non_object_body_is_400_invalid_json() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    for body in ["{\"external_user_id\":", "[1,2]", "\"usr\"", ""] {
        let (status, codes, fields) = error_of(stack.post_raw(&key, body.into(), None).await).await;
        assert_eq!(
            (status, codes[0].as_str(), fields[0].as_str()),
            (400, "invalid_json", "body"),
            "{body:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn malformed_idempotency_key_is_400() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({"external_user_id": "u1"}).to_string();
    for bad in [&[][..], &[b'k'; 256][..], "clé".as_bytes(), b"a\tb"] {
        let response = stack
            .request(Method::POST, "/api/v1/users", Some(&key))
            .header("content-type", "application/json")
            .header("idempotency-key", HeaderValue::from_bytes(bad).unwrap())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, codes, fields) = error_of(response).await;
        assert_eq!(status, 400, "{bad:?}");
        assert_eq!(
            (codes[0].as_str(), fields[0].as_str()),
            ("invalid_idempotency_key", "Idempotency-Key")
        );
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn authentication_failures_are_401_with_www_authenticate() {
    let stack = Stack::new().await;
    let revoked = stack.key(&ALL_SCOPES).await;
    stack
        .revoke(&vibefollow_users::domain::auth::key_hash(&revoked))
        .await;
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing_authorization"),
        (Some("Basic dXNlcjpwYXNz"), "malformed_authorization"),
        (Some("Bearer sk_live_tooshort"), "malformed_authorization"),
        (
            Some("Bearer sk_live_000000000000000000000000000000"),
            "invalid_api_key",
        ),
        (Some(&format!("Bearer {revoked}")), "invalid_api_key"),
    ];
    for (header, code) in cases {
        let mut request = stack
            .request(Method::POST, "/api/v1/users", None)
            .header("content-type", "application/json");
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request
            .body(r#"{"external_user_id":"u"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let (status, codes, fields) = error_of(response).await;
        assert_eq!(
            (status, codes[0].as_str(), fields[0].as_str()),
            (401, code, "Authorization"),
            "{header:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn key_without_the_route_scope_is_403() {
    let stack = Stack::new().await;
    let read_only = stack.key(&[Scope::UsersRead]).await;
    let (status, codes, _) = error_of(
        stack
            .post(&read_only, &json!({"external_user_id": "u"}))
            .await,
    )
    .await;
    assert_eq!((status, codes[0].as_str()), (403, "insufficient_scope"));
    let write_only = stack.key(&[Scope::UsersWrite]).await;
    let (status, codes, _) = error_of(stack.get_user(&write_only, "u").await).await;
    assert_eq!((status, codes[0].as_str()), (403, "insufficient_scope"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn unknown_route_is_404_and_wrong_method_is_405_with_allow() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let response = stack
        .request(Method::GET, "/api/v1/accounts", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.1, ["not_found"]);
    let response = stack
        .request(Method::DELETE, "/api/v1/users", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, POST");
    let (status, codes, _) = error_of(response).await;
    assert_eq!((status, codes[0].as_str()), (405, "method_not_allowed"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn body_over_32_kib_is_413_and_exactly_32_kib_is_not() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let padded = |size: usize| {
        let skeleton = json!({"external_user_id": "u", "traits": {"pad": ""}}).to_string();
        let pad = "x".repeat(size - skeleton.len());
        json!({"external_user_id": "u", "traits": {"pad": pad}}).to_string()
    };
    let (status, codes, _) = error_of(stack.post_raw(&key, padded(32_769), None).await).await;
    assert_eq!((status, codes[0].as_str()), (413, "payload_too_large"));
    assert_eq!(
        stack.post_raw(&key, padded(32_768), None).await.status(),
        202
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn content_type_must_be_json_parameters_allowed() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    for (content_type, status) in [
        ("text/plain", 415),
        ("application/json; charset=utf-8", 202),
        ("Application/JSON", 202),
    ] {
        let response = stack
            .request(Method::POST, "/api/v1/users", Some(&key))
            .header("content-type", content_type)
            .body(r#"{"external_user_id":"u"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
    }
    let response = stack
        .request(Method::POST, "/api/v1/users", Some(&key))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, codes, fields) = error_of(response).await;
    assert_eq!(
        (status, codes[0].as_str(), fields[0].as_str()),
        (415, "unsupported_media_type", "Content-Type")
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn schema_errors_are_422_listed_in_body_order() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"traits":{"signupDate":"not a date","tags":[1,2,1e300]},"email":"jane@","external_user_id":"u","surprise":1}"#;
    let (status, codes, fields) = error_of(stack.post_raw(&key, body.into(), None).await).await;
    assert_eq!(status, 422);
    assert_eq!(
        fields,
        ["traits.signupDate", "traits.tags[2]", "email", "surprise"]
    );
    assert_eq!(
        codes,
        [
            "invalid_datetime",
            "invalid_number",
            "invalid_email",
            "unknown_field"
        ]
    );

    let (_, codes, fields) = error_of(stack.post(&key, &json!({"email": "a@b.io"})).await).await;
    assert_eq!(
        (codes[0].as_str(), fields[0].as_str()),
        ("required", "external_user_id")
    );
    let conflict =
        json!({"external_user_id": "u", "email": "a@b.io", "traits": {"email": "c@d.io"}});
    let (_, codes, fields) = error_of(stack.post(&key, &conflict).await).await;
    assert_eq!(
        (codes[0].as_str(), fields[0].as_str()),
        ("conflict", "traits.email")
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn error_answers_never_echo_stored_email() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = json!({"external_user_id": "u", "email": "not-an-address"});
    let text = stack.post(&key, &body).await.text().await.unwrap();
    assert!(!text.contains("not-an-address"), "{text}");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn replay_with_same_body_is_202_replayed_and_enqueues_nothing() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let first = r#"{"external_user_id":"u1","traits":{"plan":"trial","name":"Jane"}}"#;
    let same =
        "{ \"traits\" : {\"name\":\"Jane\", \"plan\":\"trial\"}, \"external_user_id\" : \"u1\" }";
    let response = stack.post_raw(&key, first.into(), Some("idem-1")).await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let original = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // The key is marked done right after the answer; a retry may briefly see 409.
    let replay = eventually(Duration::from_secs(5), || async {
        let response = stack.post_raw(&key, same.into(), Some("idem-1")).await;
        (response.status() != 409).then_some(response)
    })
    .await
    .expect("replay answered");
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_ne!(replay.headers()["x-request-id"].to_str().unwrap(), original);
    assert_eq!(
        replay.text().await.unwrap(),
        r#"{"data":{"accepted":true}}"#
    );

    // A later marker upsert is applied after anything the replay could have enqueued.
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"role": "m"}}),
        )
        .await;
    user_when(&stack, &key, "u1", |u| u["traits"]["role"] == "m").await;
    let stored = stack.stored("u1").await.unwrap();
    assert_eq!(
        stored.profile.stamps["plan"].request_id, original,
        "replay was enqueued again"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn same_key_with_other_body_is_422_reused() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let response = stack
        .post_raw(&key, r#"{"external_user_id":"u"}"#.into(), Some("idem-2"))
        .await;
    assert_eq!(response.status(), 202);
    let (status, codes, fields) = error_of(
        stack
            .post_raw(&key, r#"{"external_user_id":"v"}"#.into(), Some("idem-2"))
            .await,
    )
    .await;
    assert_eq!(
        (status, codes[0].as_str(), fields[0].as_str()),
        (422, "idempotency_key_reused", "Idempotency-Key")
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn idempotency_keys_are_scoped_to_the_workspace() {
    let stack = Stack::new().await;
    let other = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let other_key = other.key(&ALL_SCOPES).await;
    assert_eq!(
        stack
            .post_raw(&key, r#"{"external_user_id":"u"}"#.into(), Some("shared"))
            .await
            .status(),
        202
    );
    let response = other
        .post_raw(
            &other_key,
            r#"{"external_user_id":"v"}"#.into(),
            Some("shared"),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn key_held_by_a_live_request_is_409_with_retry_after() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"external_user_id":"u"}"#;
    let hash = body_hash(&serde_json::from_str::<Value>(body).unwrap());
    let holder = Stamp::new(now_ms(), "other-request");
    assert_eq!(
        stack
            .idempotency()
            .claim(&stack.workspace, "held", &hash, &holder)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let response = stack.post_raw(&key, body.into(), Some("held")).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, codes, _) = error_of(response).await;
    assert_eq!((status, codes[0].as_str()), (409, "idempotency_key_in_use"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn key_of_a_request_that_died_is_processed_after_30s_with_its_original_stamp() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"external_user_id":"u","traits":{"plan":"pro"}}"#;
    let hash = body_hash(&serde_json::from_str::<Value>(body).unwrap());
    let died = Stamp::new(now_ms() - 31_000, "died-in-flight");
    stack
        .idempotency()
        .claim(&stack.workspace, "orphan", &hash, &died)
        .await
        .unwrap();
    let response = stack.post_raw(&key, body.into(), Some("orphan")).await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());
    user_when(&stack, &key, "u", |u| u["traits"]["plan"] == "pro").await;
    assert_eq!(
        stack.stored("u").await.unwrap().profile.stamps["plan"],
        died
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn twenty_parallel_requests_with_one_key_enqueue_exactly_once() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"external_user_id":"par","traits":{"plan":"team"}}"#;
    let responses = futures::future::join_all(
        (0..20).map(|_| stack.post_raw(&key, body.into(), Some("par-key"))),
    )
    .await;
    let mut fresh = Vec::new();
    for response in responses {
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        assert!(status == 202 || status == 409, "unexpected {status}");
        if status == 202 && !replayed {
            fresh.push(
                response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    assert_eq!(
        fresh.len(),
        1,
        "exactly one request is processed: {fresh:?}"
    );
    user_when(&stack, &key, "par", |u| u["traits"]["plan"] == "team").await;
    let stored = stack.stored("par").await.unwrap();
    assert_eq!(stored.profile.stamps["plan"].request_id, fresh[0]);
    assert_eq!(
        stored.profile.created_at, stored.profile.updated_at,
        "a second message was applied"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn over_the_rate_is_429_with_headers_and_accepts_nothing() {
    let stack = Stack::new().await;
    let key = stack.key_with_rate(&ALL_SCOPES, 2).await;
    let first_window = now_ms() / 1000;
    let ids: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    let bodies: Vec<String> = ids
        .iter()
        .map(|id| json!({"external_user_id": id}).to_string())
        .collect();
    let responses = futures::future::join_all(
        bodies
            .iter()
            .map(|body| stack.post_raw(&key, body.clone(), None)),
    )
    .await;
    let last_window = now_ms() / 1000;
    let mut accepted = Vec::new();
    let mut limited = Vec::new();
    for (id, response) in ids.iter().zip(responses) {
        match response.status().as_u16() {
            202 => accepted.push(id.clone()),
            429 => {
                let headers = response.headers();
                let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry_after >= 1);
                assert_eq!(headers["ratelimit-policy"], "\"workspace\";q=2;w=1");
                assert!(headers["ratelimit"]
                    .to_str()
                    .unwrap()
                    .starts_with("\"workspace\";r=0;t="));
                assert_eq!(error_of(response).await.1, ["rate_limited"]);
                limited.push(id.clone());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        !accepted.is_empty() && !limited.is_empty(),
        "accepted {accepted:?}"
    );
    // The shared counter: every accepted request took one token (one instance spends
    // what it leases), within the limits of one second and of two.
    let counter = stack
        .rate_limits()
        .counter(&stack.workspace)
        .await
        .unwrap()
        .expect("a counter");
    let counted = if counter.window > first_window {
        counter.used + counter.previous
    } else {
        counter.used
    };
    assert!(counter.window <= last_window, "{counter:?}");
    assert!(
        counter.used <= burst(2) && counter.used + counter.previous <= 4,
        "{counter:?}"
    );
    if last_window - first_window <= 1 {
        assert_eq!(
            counted,
            accepted.len() as u64,
            "{counter:?} for {accepted:?}"
        );
    }

    let reader = stack.key(&ALL_SCOPES).await;
    for id in &accepted {
        user_when(&stack, &reader, id, |_| true).await;
    }
    for id in &limited {
        assert_eq!(
            stack.get_user(&reader, id).await.status(),
            404,
            "{id} was rate limited yet stored"
        );
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_key_with_a_rate_of_zero_is_blocked() {
    let stack = Stack::new().await;
    let blocked = stack.key_with_rate(&ALL_SCOPES, 0).await;
    let response = stack
        .post(&blocked, &json!({"external_user_id": "b"}))
        .await;
    assert_eq!(response.headers()["retry-after"], "60");
    assert_eq!(error_of(response).await.1, ["rate_limited"]);
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_member_named_twice_is_422_duplicate_field() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let body = r#"{"external_user_id":"d","traits":{"plan":"a","nested":{"k":1,"k":2}}}"#;
    let (status, codes, fields) = error_of(stack.post_raw(&key, body.into(), None).await).await;
    assert_eq!(
        (status, codes, fields),
        (
            422,
            vec!["duplicate_field".to_owned()],
            vec!["traits.nested.k".to_owned()]
        )
    );
}

/// The worst body for the answer's size: every value a number no DynamoDB number can
/// hold. The answer lists the first 100 errors, says so, and stays under 1 MiB.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_answer_lists_at_most_100_errors_and_says_it_is_truncated() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let traits: serde_json::Map<String, Value> = (0..256)
        .map(|i| (format!("n{i:03}"), json!(1e300)))
        .collect();
    let body = json!({"external_user_id": "worst", "traits": traits}).to_string();
    let response = stack.post_raw(&key, body, None).await;
    assert_eq!(response.status(), 422);
    let text = response.text().await.unwrap();
    assert!(text.len() < 1024 * 1024, "{} bytes", text.len());
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["errors"].as_array().unwrap().len(), 100);
    assert_eq!(answer["errors_truncated"], true);
    assert_eq!(answer["errors"][0]["field"], "traits.n000");
}
