//! Audiences against the local stack: definitions and their answers, live membership
//! (upsert → member and `Audience Entered` at a subscriber), erasure, builds over
//! existing users with writes during them, time-relative rules moved by the schedule
//! alone, deletes. Latency figures come from `dev/audience_latency.py`.

use crate::support::{
    clear_faults, error_of, percent_encode, set_faults, until_working, user_when, vfctl_json,
    Stack, Subscription, ALL_SCOPES,
};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use vibefollow_users::domain::auth::Scope;
use vibefollow_users::domain::format_millis;

/// The functions whose invocations are the work these tests wait on.
const WORKERS: &[&str] = &["consumer", "audiences"];

impl Stack {
    async fn put_audience(&self, key: &str, id: &str, body: &Value) -> Response {
        let path = format!("/api/v1/audiences/{}", percent_encode(id));
        self.request(Method::PUT, &path, Some(key))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT audience")
    }

    /// Defines an audience that must be accepted.
    async fn define(&self, key: &str, id: &str, rule: Value) {
        let response = self
            .put_audience(key, id, &json!({"name": id, "rule": rule}))
            .await;
        assert_eq!(response.status(), 202, "{id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["data"],
            json!({"audience_id": id, "status": "building"})
        );
    }

    /// Deletes an audience, which must be accepted.
    async fn delete_audience(&self, key: &str, id: &str) {
        let path = format!("/api/v1/audiences/{}", percent_encode(id));
        let response = self
            .request(Method::DELETE, &path, Some(key))
            .send()
            .await
            .expect("DELETE audience");
        assert_eq!(response.status(), 202, "{id}");
    }

    /// Defines each audience, then waits until every one is ready.
    async fn define_ready(&self, key: &str, audiences: &[(&str, Value)]) {
        for (id, rule) in audiences {
            self.define(key, id, rule.clone()).await;
        }
        for (id, _) in audiences {
            self.ready(key, id).await;
        }
    }

    async fn get_json(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .request(Method::GET, path, Some(key))
            .send()
            .await
            .expect("GET");
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn audience(&self, key: &str, id: &str) -> Value {
        let (status, body) = self.get_json(key, &format!("/api/v1/audiences/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    /// The audience once its build is done.
    async fn ready(&self, key: &str, id: &str) -> Value {
        until_working(self, WORKERS, &format!("audience {id} ready"), || async {
            let audience = self.audience(key, id).await;
            (audience["status"] == "ready").then_some(audience)
        })
        .await
    }

    /// Every member, walking the pages `limit` at a time.
    async fn members(&self, key: &str, id: &str, limit: usize) -> Vec<String> {
        let mut members = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/audiences/{id}/members?limit={limit}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, body) = self.get_json(key, &path).await;
            assert_eq!(status, 200, "{body}");
            let page = body["data"].as_array().unwrap();
            assert!(page.len() <= limit);
            members.extend(
                page.iter()
                    .map(|m| m["external_user_id"].as_str().unwrap().to_owned()),
            );
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return members,
            }
        }
    }

    /// The members once they are `expected`.
    async fn members_when(&self, key: &str, id: &str, expected: &BTreeSet<String>) {
        until_working(
            self,
            WORKERS,
            &format!("members of {id}: {expected:?}"),
            || async {
                let members: BTreeSet<String> =
                    self.members(key, id, 100).await.into_iter().collect();
                (members == *expected).then_some(())
            },
        )
        .await;
    }

    async fn user_audiences(&self, key: &str, user: &str) -> Vec<String> {
        let (status, body) = self
            .get_json(
                key,
                &format!("/api/v1/users/{}/audiences", percent_encode(user)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["audience_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn ids(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

/// Membership by replaying Entered/Exited per (audience, user) in `user_version` order,
/// checking that they alternate and that no id repeats.
fn replayed(events: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_pair: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        let detail = &event["detail"];
        if !seen.insert(detail["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let pair = (
            detail["audience_id"].as_str().unwrap().to_owned(),
            detail["external_user_id"].as_str().unwrap().to_owned(),
        );
        by_pair.entry(pair).or_default().push(event);
    }
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((audience, user), mut events) in by_pair {
        events.sort_by_key(|e| {
            (
                e["detail"]["user_version"].as_u64(),
                e["detail"]["at"].as_str().map(str::to_owned),
            )
        });
        let mut member = false;
        for event in events {
            let entered = event["detail-type"] == "Audience Entered";
            assert_ne!(
                entered, member,
                "{audience}/{user}: events do not alternate"
            );
            member = entered;
        }
        if member {
            members.entry(audience).or_default().insert(user);
        }
    }
    members
}

/// A stack, a key with every scope, a subscription to its audience events, and
/// `audiences` defined and ready.
async fn with_audiences(audiences: &[(&str, Value)]) -> (Stack, String, Subscription) {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let events = Subscription::new(&stack, "vibefollow.audiences").await;
    stack.define_ready(&key, audiences).await;
    (stack, key, events)
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_upsert_enters_its_audiences_live_and_a_change_or_an_erase_takes_it_out() {
    let (stack, key, events) = with_audiences(&[
        (
            "trials",
            json!({"field": "plan", "op": "eq", "value": "trial"}),
        ),
        (
            "acme",
            json!({"field": "email", "op": "ends_with", "value": "@ACME.io"}),
        ),
    ])
    .await;

    stack.accept(&key, &json!({"external_user_id": "u1", "email": "Jane@acme.io", "traits": {"plan": "trial"}})).await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u2", "traits": {"plan": "trial"}}),
        )
        .await;
    stack
        .members_when(&key, "trials", &ids(&["u1", "u2"]))
        .await;
    stack.members_when(&key, "acme", &ids(&["u1"])).await;
    assert_eq!(stack.user_audiences(&key, "u1").await, ["acme", "trials"]);
    let trials = stack.audience(&key, "trials").await;
    assert_eq!(
        (trials["members"].clone(), trials["status"].clone()),
        (json!(2), json!("ready"))
    );

    // A change takes u1 out of trials; an erase takes u2 out of everything.
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"plan": "pro"}}),
        )
        .await;
    let erase = stack
        .request(Method::DELETE, "/api/v1/users/u2", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(erase.status(), 202);
    stack.members_when(&key, "trials", &BTreeSet::new()).await;
    // An erased user has no profile, and no audiences to show: 404, as for the user.
    let path = "/api/v1/users/u2/audiences";
    assert_eq!(stack.get_json(&key, path).await.0, 404);

    let mut received = Vec::new();
    events
        .until(&stack, &mut received, |got| got.len() >= 5)
        .await;
    let kinds: BTreeSet<(String, String, String, String)> = received
        .iter()
        .map(|e| {
            let d = &e["detail"];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&e["detail-type"]),
                s(&d["audience_id"]),
                s(&d["external_user_id"]),
                s(&d["reason"]),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = [
        ("Audience Entered", "trials", "u1", "change"),
        ("Audience Entered", "acme", "u1", "change"),
        ("Audience Entered", "trials", "u2", "change"),
        ("Audience Exited", "trials", "u1", "change"),
        ("Audience Exited", "trials", "u2", "erase"),
    ]
    .iter()
    .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
    .collect();
    assert_eq!(kinds, expected);
    for event in &received {
        assert_eq!(event["source"], "vibefollow.audiences");
        let detail = event["detail"].as_object().unwrap();
        let fields: BTreeSet<&str> = detail.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "id",
                "workspace_id",
                "audience_id",
                "external_user_id",
                "user_version",
                "at",
                "reason"
            ]),
            "ids only, no PII"
        );
    }
    assert_eq!(
        replayed(&received),
        BTreeMap::from([("acme".to_owned(), ids(&["u1"]))])
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn bad_rules_and_ids_get_clear_answers_never_a_500() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let refused = |rule: Value| json!({"name": "x", "rule": rule});
    let cases = [
        (
            refused(json!({"all": [{"field": "plan", "op": "like", "value": "a"}]})),
            "invalid_format",
            "rule.all[0].op",
        ),
        (
            refused(json!({"field": "plan", "op": "in", "value": "pro"})),
            "invalid_type",
            "rule.value",
        ),
        (
            refused(json!({"field": "seen", "op": "within_last", "value": "a week"})),
            "invalid_format",
            "rule.value",
        ),
        (
            refused(json!({"field": "seen", "op": "within_last", "value": "P3651D"})),
            "out_of_range",
            "rule.value",
        ),
        (
            refused(
                json!({"not": {"not": {"not": {"not": {"not": {"field": "a", "op": "exists"}}}}}}),
            ),
            "too_deep",
            "rule.not.not.not.not.not",
        ),
        (
            refused(json!({"any": vec![json!({"field": "a", "op": "exists"}); 51]})),
            "too_many",
            "rule",
        ),
        (json!({"name": "x"}), "required", "rule"),
    ];
    for (body, code, field) in cases {
        let (status, codes, fields) = error_of(stack.put_audience(&key, "a", &body).await).await;
        assert_eq!(
            (status, codes[0].as_str(), fields[0].as_str()),
            (422, code, field),
            "{body}"
        );
    }
    // A member named twice, or a number a rule could hold only rounded: as on /users.
    for (body, code, field) in [
        (
            r#"{"name":"x","rule":{"field":"p","op":"eq","value":1,"value":2}}"#,
            "duplicate_field",
            "rule.value",
        ),
        (
            r#"{"name":"x","rule":{"field":"p","op":"gt","value":1e-400}}"#,
            "invalid_number",
            "rule.value",
        ),
    ] {
        let response = stack
            .request(Method::PUT, "/api/v1/audiences/a", Some(&key))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("PUT audience");
        let (status, codes, fields) = error_of(response).await;
        assert_eq!(
            (status, codes[0].as_str(), fields[0].as_str()),
            (422, code, field),
            "{body}"
        );
    }
    let good = json!({"name": "x", "rule": {"field": "plan", "op": "exists"}});
    let (status, codes, fields) = error_of(stack.put_audience(&key, "a b", &good).await).await;
    assert_eq!(
        (status, codes, fields),
        (
            422,
            vec!["invalid_format".to_owned()],
            vec!["audience_id".to_owned()]
        )
    );
    let long = "a".repeat(65);
    for path in [
        format!("/api/v1/audiences/{long}"),
        format!("/api/v1/audiences/{long}/members"),
        "/api/v1/audiences/a%20b".to_owned(),
        "/api/v1/audiences/never-defined".to_owned(),
        format!("/api/v1/users/{}/audiences", "u".repeat(300)),
    ] {
        let (status, body) = stack.get_json(&key, &path).await;
        assert_eq!(
            (status, body["errors"][0]["code"].clone()),
            (404, json!("not_found")),
            "{path}"
        );
    }
    stack
        .define(&key, "a", json!({"field": "plan", "op": "exists"}))
        .await;
    let (status, body) = stack
        .get_json(&key, "/api/v1/audiences/a/members?limit=0")
        .await;
    assert_eq!(
        (status, body["errors"][0]["field"].clone()),
        (422, json!("limit"))
    );
    // Scopes: writing needs audiences:write, reading audiences:read.
    let reader = stack.key(&[Scope::AudiencesRead]).await;
    assert_eq!(stack.put_audience(&reader, "b", &good).await.status(), 403);
    assert_eq!(stack.get_json(&reader, "/api/v1/audiences").await.0, 200);
    let users_only = stack.key(&[Scope::UsersWrite, Scope::UsersRead]).await;
    assert_eq!(
        stack.get_json(&users_only, "/api/v1/audiences/a").await.0,
        403
    );
    // users:read reads a user's audiences (this one has no profile: 404, not 403).
    assert_eq!(
        stack
            .get_json(&users_only, "/api/v1/users/u1/audiences")
            .await
            .0,
        404
    );
    // With an Idempotency-Key, a retried PUT answers the same and defines nothing again.
    let put = |body: &Value| {
        stack
            .request(Method::PUT, "/api/v1/audiences/c", Some(&key))
            .header("content-type", "application/json")
            .header("idempotency-key", "define-c")
            .body(body.to_string())
            .send()
    };
    let first = put(&good).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let updated_at = stack.audience(&key, "c").await["updated_at"].clone();
    let replay = put(&good).await.unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(stack.audience(&key, "c").await["updated_at"], updated_at);
    let other = json!({"name": "y", "rule": {"field": "plan", "op": "exists"}});
    let (status, codes, _) = error_of(put(&other).await.unwrap()).await;
    assert_eq!((status, codes[0].as_str()), (422, "idempotency_key_reused"));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_build_covers_existing_users_and_loses_no_write_made_during_it() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let events = Subscription::new(&stack, "vibefollow.audiences").await;
    const USERS: usize = 600;
    let plan = |i: usize| if i % 3 == 0 { "trial" } else { "pro" };
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(100) {
        let users: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"external_user_id": format!("u{i:04}"), "traits": {"plan": plan(*i)}}))
            .collect();
        let response = stack
            .request(Method::POST, "/api/v1/users/batch", Some(&key))
            .json(&json!({"users": users}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let last = format!("u{:04}", USERS - 1);
    user_when(&stack, &key, &last, |u| {
        u["traits"]["plan"] == plan(USERS - 1)
    })
    .await;

    stack
        .define(
            &key,
            "trials",
            json!({"field": "plan", "op": "eq", "value": "trial"}),
        )
        .await;
    let building = stack.audience(&key, "trials").await;
    assert_eq!(building["status"], "building");
    assert!(
        building["build"]["scanned"].as_u64().is_some(),
        "{building}"
    );
    // Writes while it builds: users before and after wherever the build is now.
    let mut expected: BTreeSet<String> = (0..USERS)
        .filter(|i| plan(*i) == "trial")
        .map(|i| format!("u{i:04}"))
        .collect();
    for i in [1, 3, 299, 300, 598, 599] {
        let id = format!("u{i:04}");
        let flipped = if plan(i) == "trial" { "pro" } else { "trial" };
        stack
            .accept(
                &key,
                &json!({"external_user_id": id, "traits": {"plan": flipped}}),
            )
            .await;
        if flipped == "trial" {
            expected.insert(id);
        } else {
            expected.remove(&id);
        }
    }
    let ready = stack.ready(&key, "trials").await;
    assert!(ready.get("build").is_none(), "{ready}");
    stack.members_when(&key, "trials", &expected).await;
    // Stable paging: small pages walk every member once, in id order.
    let walked = stack.members(&key, "trials", 7).await;
    assert_eq!(walked, expected.iter().cloned().collect::<Vec<_>>());
    // Replaying the events per (audience, user) gives the same membership.
    let mut received = Vec::new();
    events
        .until(&stack, &mut received, |got| {
            replayed(got).get("trials") == Some(&expected)
        })
        .await;
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn time_moves_users_across_a_window_edge_with_no_write() {
    let (stack, key, events) = with_audiences(&[
        (
            "recent",
            json!({"field": "signupDate", "op": "within_last", "value": "PT20S"}),
        ),
        (
            "settled",
            json!({"field": "signupDate", "op": "not_within_last", "value": "PT20S"}),
        ),
    ])
    .await;
    let signup = vibefollow_users::clock::now_millis();
    let signup_text = format_millis(signup).unwrap();
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"signupDate": signup_text}}),
        )
        .await;
    stack.members_when(&key, "recent", &ids(&["u1"])).await;
    let version = stack.stored("u1").await.unwrap().version;
    // Leaving one and entering the other is the schedule's work alone: the edge is
    // 20 s after signup, and each move must come within 60 s of it.
    let edge = signup + 20_001;
    let mut received = Vec::new();
    let moved = |got: &[Value]| {
        got.iter()
            .filter(|e| e["detail"]["reason"] == "time")
            .count()
            == 2
    };
    events.until(&stack, &mut received, moved).await;
    for event in received.iter().filter(|e| e["detail"]["reason"] == "time") {
        let at = time::OffsetDateTime::parse(
            event["detail"]["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        eprintln!(
            "time rule: {} moved {} ms after the edge",
            event["detail-type"],
            at_ms - edge
        );
        assert!(
            (edge..edge + 60_000).contains(&at_ms),
            "moved {} ms after the edge: {event}",
            at_ms - edge
        );
    }
    assert_eq!(stack.user_audiences(&key, "u1").await, ["settled"]);
    assert_eq!(
        stack.stored("u1").await.unwrap().version,
        version,
        "no write to the user"
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn deleting_an_audience_drops_its_members() {
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    stack
        .define_ready(
            &key,
            &[(
                "trials",
                json!({"field": "plan", "op": "eq", "value": "trial"}),
            )],
        )
        .await;
    stack
        .accept(
            &key,
            &json!({"external_user_id": "u1", "traits": {"plan": "trial"}}),
        )
        .await;
    stack.members_when(&key, "trials", &ids(&["u1"])).await;
    // Its list is sharded (an audience defined now).
    assert_eq!(list_entries(&stack, "trials").await, Some(1));
    let delete = stack
        .request(Method::DELETE, "/api/v1/audiences/trials", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 202);
    assert_eq!(
        stack.get_json(&key, "/api/v1/audiences/trials").await.0,
        404
    );
    assert_eq!(
        stack
            .get_json(&key, "/api/v1/audiences/trials/members")
            .await
            .0,
        404
    );
    assert!(stack.user_audiences(&key, "u1").await.is_empty());
    // Deleting it again is done already.
    let again = stack
        .request(Method::DELETE, "/api/v1/audiences/trials", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    // The member list goes too (a task of the build queue), every shard of it.
    until_working(&stack, WORKERS, "the member list dropped", || async {
        (list_entries(&stack, "trials").await? == 0).then_some(())
    })
    .await;
}

/// Entries in the shards of an audience's member list, as stored.
async fn list_entries(stack: &Stack, audience: &str) -> Option<i32> {
    use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
    let mut entries = 0;
    for shard in 0..16 {
        let list = format!("a#{}#{audience}#{shard}", stack.workspace);
        let out = stack
            .dynamodb
            .query()
            .table_name(&stack.resources.audience_members_table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(list))
            .consistent_read(true)
            .send()
            .await
            .ok()?;
        entries += out.count;
    }
    Some(entries)
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_user_whose_evaluation_keeps_failing_is_parked_shown_and_redriven_while_the_rest_go_on() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let trial = json!({"field": "plan", "op": "eq", "value": "trial"});
    stack.define_ready(&key, &[("trials", trial)]).await;
    let poison = format!("poison-{}", stack.workspace);
    // Every read of the poisoned user's memberships (and of the user) is refused.
    let refused = json!({"operations": ["DynamoDB_20120810.GetItem"], "status": 400,
        "code": "ValidationException", "matching": poison});
    set_faults(&stack, &refused).await;
    for user in [poison.as_str(), "fine-1", "fine-2"] {
        let body = json!({"external_user_id": user, "traits": {"plan": "trial"}});
        stack.accept(&key, &body).await;
    }
    // The rest of its batches go on…
    let fine: BTreeSet<String> = ["fine-1", "fine-2"].map(String::from).into();
    stack.members_when(&key, "trials", &fine).await;
    // …and the poisoned user, retried apart from them, comes to rest in the parked queue,
    // where `vfctl` shows it by id.
    let parked = |status: &Value| {
        status["users"].as_array().into_iter().flatten().any(|u| {
            u["workspace_id"] == stack.workspace.as_str()
                && u["external_user_id"] == poison.as_str()
        })
    };
    until_working(&stack, WORKERS, "the poisoned user parked", || async {
        parked(&vfctl_json(&["dlq", "status", "--queue", "parked"])).then_some(())
    })
    .await;
    clear_faults(&stack).await;
    let redriven = vfctl_json(&["dlq", "redrive", "--queue", "parked"]);
    assert!(redriven["messages"].as_u64() >= Some(1), "{redriven}");
    let all: BTreeSet<String> = [poison.as_str(), "fine-1", "fine-2"]
        .map(String::from)
        .into();
    stack.members_when(&key, "trials", &all).await;
    assert!(!parked(&vfctl_json(&[
        "dlq", "status", "--queue", "parked"
    ])));
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn member_counts_stay_exact_whatever_order_decisions_are_carried_out_in() {
    let stack = Stack::new().await;
    // As audiences start now (a sharded list), and as they did before (one list).
    for (audience, sharded) in [("counted", true), ("counted-one-list", false)] {
        counts_and_pages_stay_exact(&stack, audience, sharded).await;
    }
}

async fn counts_and_pages_stay_exact(stack: &Stack, audience: &str, sharded: bool) {
    use vibefollow_users::app::ports::{Audience, Memberships};
    use vibefollow_users::domain::audience::{MembershipEvent, Reason};
    let store = stack.audiences();
    let since_rev = 3;
    let decision = |user: &str, rev: u64| MembershipEvent {
        // Commits alternate: in at 1, out at 2, in at 3…
        entered: rev % 2 == 1,
        workspace_id: stack.workspace.clone(),
        audience_id: audience.into(),
        external_user_id: user.into(),
        user_version: rev,
        rule_rev: since_rev,
        since_rev,
        at: rev as i64,
        reason: Reason::Change,
        commit: rev,
        sharded,
    };
    // Each user's decisions carried out late, twice and out of order (a fixed shuffle).
    let mut members = BTreeSet::new();
    let mut applying = Vec::new();
    for u in 0..12u64 {
        let user = format!("u{u:02}");
        let last = 1 + u % 5;
        if last % 2 == 1 {
            members.insert(user.clone());
        }
        let mut revs: Vec<u64> = (1..=last).collect();
        revs.rotate_left((u % last) as usize);
        revs.push(1 + u % last);
        applying.push((user, revs));
    }
    let workspace = stack.workspace.as_str();
    let applied = applying.iter().map(|(user, revs)| {
        let store = &store;
        let decision = &decision;
        async move {
            for rev in revs {
                store
                    .write_entries(workspace, user, *rev, &[decision(user, *rev)])
                    .await
                    .expect("applied");
            }
        }
    });
    futures::future::join_all(applied).await;
    let count = store.count(workspace, (audience, since_rev)).await.unwrap();
    assert_eq!(count, members.len() as u64);
    let listed_count = members.len();
    let rule_json = json!({"field": "plan", "op": "eq", "value": "trial"});
    let definition = Audience {
        audience_id: audience.into(),
        name: audience.into(),
        rule: vibefollow_users::contract::parse_rule(&rule_json).unwrap(),
        rule_json,
        rule_rev: since_rev,
        since_rev,
        building: None,
        updated_at: 0,
        counted: true,
        sharded,
    };
    // Paged two at a time, across the list's shards: each member once, in id order.
    let (mut listed, mut after) = (Vec::new(), None::<String>);
    loop {
        let (page, more) = store
            .members(workspace, &definition, 2, after.as_deref())
            .await
            .unwrap();
        listed.extend(page.into_iter().map(|(id, _)| id));
        after = listed.last().cloned();
        if !more {
            break;
        }
        assert!(listed.len() <= listed_count, "{listed:?}");
    }
    assert_eq!(listed, members.into_iter().collect::<Vec<_>>());
    if !sharded {
        let counted = store.count_listed(workspace, (audience, since_rev));
        assert_eq!(counted.await.unwrap(), count);
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_stream_batch_that_kept_failing_is_read_again_and_its_users_settled() {
    let stack = Stack::alone().await;
    let key = stack.key(&ALL_SCOPES).await;
    let trial = json!({"field": "plan", "op": "eq", "value": "trial"});
    stack.define_ready(&key, &[("trials", trial)]).await;
    let user = format!("lost-{}", stack.workspace);
    // Its evaluation fails and it cannot even be parked: its stream batch fails until
    // the records go to the failure destination, whose positions cannot be parked
    // either, until they rest in that queue's dead-letter queue.
    let faults = json!({"operations": ["DynamoDB_20120810.GetItem", "AmazonSQS.SendMessageBatch"],
        "status": 500, "code": "InternalServerError", "matching": user});
    set_faults(&stack, &faults).await;
    let body = json!({"external_user_id": user, "traits": {"plan": "trial"}});
    stack.accept(&key, &body).await;
    let waiting =
        || vfctl_json(&["dlq", "status", "--queue", "stream-failures"])["messages"].as_u64();
    until_working(
        &stack,
        WORKERS,
        "the positions in the dead-letter queue",
        || async { (waiting() >= Some(1)).then_some(()) },
    )
    .await;
    clear_faults(&stack).await;
    let redriven = vfctl_json(&["dlq", "redrive", "--queue", "stream-failures"]);
    assert!(redriven["messages"].as_u64() >= Some(1), "{redriven}");
    // Read again from the stream, parked, settled: nothing a failure destination names
    // is only logged.
    let members: BTreeSet<String> = [user].into();
    stack.members_when(&key, "trials", &members).await;
    assert_eq!(waiting(), Some(0));
}

/// What copy `k` of a workspace's definitions holds: its revision, whether it is whole,
/// and the audiences in it.
#[derive(Debug, PartialEq)]
struct Copy {
    revision: Option<u64>,
    whole: bool,
    audiences: Vec<String>,
}

/// Copies of a workspace's definitions the store keeps (`copies.rs`).
const COPIES: u32 = 32;

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn the_definitions_and_their_revision_are_read_from_copies_kept_with_them_or_filled_from_them(
) {
    use vibefollow_users::app::ports::Audiences;
    use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let store = stack.audiences();
    let workspace = stack.workspace.as_str();
    let table = stack.resources.audiences_table.as_str();
    stack
        .define(
            &key,
            "trials",
            json!({"field": "plan", "op": "eq", "value": "trial"}),
        )
        .await;
    let dynamodb = &stack.dynamodb;
    let partition = move |pk: String| async move {
        let out = dynamodb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        out.items.unwrap_or_default()
    };
    let copies = || async {
        let mut found = Vec::new();
        for k in 1..=COPIES {
            let mut copy = Copy {
                revision: None,
                whole: false,
                audiences: Vec::new(),
            };
            for item in partition(format!("{workspace}#{k}")).await {
                let sk = item["sk"].as_s().unwrap().clone();
                if sk == "#definitions" {
                    copy.revision = item["revision"].as_n().ok().and_then(|n| n.parse().ok());
                    copy.whole = item.get("whole").is_some_and(|w| w.as_bool() == Ok(&true));
                } else {
                    assert!(
                        !item.contains_key("building"),
                        "no build progress in a copy"
                    );
                    copy.audiences.push(sk);
                }
            }
            found.push(copy);
        }
        found
    };
    let each = |revision: u64, audiences: &[&str]| {
        (0..COPIES)
            .map(|_| Copy {
                revision: Some(revision),
                whole: true,
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            })
            .collect::<Vec<_>>()
    };
    let rules = || async {
        let mut answers = BTreeSet::new();
        for _ in 0..2 * COPIES {
            let rules = store.rules(workspace).await.unwrap();
            let ids: Vec<String> = rules
                .audiences
                .iter()
                .map(|a| a.audience_id.clone())
                .collect();
            assert!(rules.audiences.iter().all(|a| a.building.is_none()));
            answers.insert((rules.revision, ids));
        }
        answers
    };
    let revisions = || async {
        let mut answers = BTreeSet::new();
        for _ in 0..2 * COPIES {
            answers.insert(store.revision(workspace).await.unwrap());
        }
        answers
    };
    // Written with the definition, in the define's transaction: whole from the first.
    assert_eq!(copies().await, each(1, &["trials"]));
    assert_eq!(rules().await, [(1, vec!["trials".to_owned()])].into());
    assert_eq!(revisions().await, [1].into());
    // Reads take the copies, never the workspace's own key: its revision item moved
    // alone (as no define moves it) is not what they answer.
    let set_revision_item = |revision: u64| {
        stack
            .dynamodb
            .update_item()
            .table_name(table)
            .key("pk", AttributeValue::S(workspace.to_owned()))
            .key("sk", AttributeValue::S("#definitions".into()))
            .update_expression("SET revision = :r")
            .expression_attribute_values(":r", AttributeValue::N(revision.to_string()))
            .send()
    };
    set_revision_item(99).await.unwrap();
    assert_eq!(revisions().await, [1].into());
    assert_eq!(rules().await, [(1, vec!["trials".to_owned()])].into());
    set_revision_item(1).await.unwrap();
    // A workspace from before copies were kept: every read answers from the originals,
    // and the copies are made from them.
    for k in 1..=COPIES {
        for item in partition(format!("{workspace}#{k}")).await {
            stack
                .dynamodb
                .delete_item()
                .table_name(table)
                .key("pk", item["pk"].clone())
                .key("sk", item["sk"].clone())
                .send()
                .await
                .unwrap();
        }
    }
    // (The stack's own readers may already be filling them again.)
    assert_eq!(revisions().await, [1].into());
    assert_eq!(rules().await, [(1, vec!["trials".to_owned()])].into());
    assert_eq!(copies().await, each(1, &["trials"]));
    // The next define and delete move them all.
    stack
        .define(
            &key,
            "pros",
            json!({"field": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    assert_eq!(copies().await, each(2, &["pros", "trials"]));
    assert_eq!(
        rules().await,
        [(2, vec!["pros".to_owned(), "trials".to_owned()])].into()
    );
    stack.delete_audience(&key, "trials").await;
    assert_eq!(copies().await, each(3, &["pros"]));
    assert_eq!(rules().await, [(3, vec!["pros".to_owned()])].into());
    assert_eq!(revisions().await, [3].into());
}

/// A workspace's users are listed in 16 shards, and those created before the shards
/// stay in the one key they were listed under, a write leaving them there: a build
/// pages the old key and then every shard, finding each user once.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_build_finds_users_listed_before_the_shards_and_in_every_shard_once() {
    use vibefollow_users::app::ports::WorkspaceUsers;
    use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
    let stack = Stack::new().await;
    let key = stack.key(&ALL_SCOPES).await;
    let ids: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    let users: Vec<Value> = ids
        .iter()
        .map(|id| json!({"external_user_id": id, "traits": {"plan": "trial"}}))
        .collect();
    let response = stack
        .request(Method::POST, "/api/v1/users/batch", Some(&key))
        .json(&json!({ "users": users }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for id in &ids {
        user_when(&stack, &key, id, |u| u["traits"]["plan"] == "trial").await;
    }
    // A quarter as items written before the shards: listed under the workspace alone.
    let item_of = |id: &str| {
        let pk = AttributeValue::S(format!("{}#{id}", stack.workspace));
        (stack.resources.users_table.clone(), pk)
    };
    for id in ids.iter().step_by(4) {
        let (table, pk) = item_of(id);
        stack
            .dynamodb
            .update_item()
            .table_name(table)
            .key("pk", pk)
            .update_expression("REMOVE workspace_shard SET workspace_id = :w")
            .expression_attribute_values(":w", AttributeValue::S(stack.workspace.clone()))
            .send()
            .await
            .unwrap();
    }
    // Written again, such a user stays where it is listed.
    stack
        .accept(
            &key,
            &json!({"external_user_id": "s00", "traits": {"plan": "pro"}}),
        )
        .await;
    user_when(&stack, &key, "s00", |u| u["traits"]["plan"] == "pro").await;
    let item = stack.user_item("s00").await.unwrap();
    assert!(item.contains_key("workspace_id") && !item.contains_key("workspace_shard"));
    // Paged in small pages: every user once.
    let store = stack.users();
    let (mut found, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let (page, next) = store
            .page(&stack.workspace, cursor.as_deref(), 7)
            .await
            .unwrap();
        found.extend(page.into_iter().map(|u| u.external_user_id));
        pages += 1;
        assert!(pages <= 40, "the pages never end");
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    found.sort();
    assert_eq!(found, ids);
    // And the audiences function's build does the same.
    let all_trials = json!({"field": "plan", "op": "eq", "value": "trial"});
    stack.define(&key, "trials", all_trials).await;
    stack.ready(&key, "trials").await;
    let expected: BTreeSet<String> = ids.iter().skip(1).cloned().collect();
    stack.members_when(&key, "trials", &expected).await;
}
