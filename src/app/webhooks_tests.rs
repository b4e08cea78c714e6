//! Webhook endpoints over in-memory ports: created with a secret, replaced keeping it,
//! bounded per workspace, `include` only for keys that read profiles, rotated, paged,
//! deleted; ids refused before anything is stored.

use super::*;
use crate::app::fakes::{unavailable, MemoryBuilds, MemoryCounters, MemoryWebhooks};
use crate::app::ports::{DeliveryLog, LoggedAttempt};
use crate::contract::parse_webhook;
use crate::domain::webhook::{log_place, EventType, Reach};
use serde_json::{json, Value};
use std::sync::Mutex;

const T0: i64 = 1_800_000_000_000;

struct World {
    store: MemoryWebhooks,
    subscriptions: Subscriptions<MemoryWebhooks, Arc<MemoryCounters>, MemoryBuilds>,
    /// Replays scheduled.
    replays: MemoryBuilds,
    /// Each secret's random bytes: 1s, then 2s, …
    made: Arc<Mutex<u8>>,
}

fn world() -> World {
    let store = MemoryWebhooks::default();
    let limiter = Arc::new(RateLimiter::new(Arc::new(MemoryCounters::default())));
    let made = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&made);
    let random: Random = Arc::new(move || {
        let mut made = counter.lock().unwrap();
        *made += 1;
        Ok([*made; SECRET_BYTES])
    });
    let replays = MemoryBuilds::default();
    World {
        subscriptions: Subscriptions::with_random(store.clone(), replays.clone(), limiter, random),
        store,
        replays,
        made,
    }
}

fn caller(workspace_id: &str) -> Caller {
    Caller {
        workspace_id: workspace_id.into(),
        rate: 10_000,
    }
}

fn secret(n: u8) -> Secret {
    Secret(secret_from(&[n; SECRET_BYTES]))
}

fn body(value: Value) -> Result<WebhookDefinition, RequestError> {
    parse_webhook(value.to_string().as_bytes(), Reach::Public).map_err(RequestError::from)
}

fn entered_at(url: &str) -> Result<WebhookDefinition, RequestError> {
    body(json!({"url": url, "events": ["audience.entered"]}))
}

impl World {
    async fn put(
        &self,
        id: &str,
        definition: Result<WebhookDefinition, RequestError>,
        at: i64,
    ) -> Result<Subscribed, AppError> {
        self.subscriptions
            .put(&caller("ws"), id, definition, false, at)
            .await
    }
}

#[tokio::test]
async fn a_new_endpoint_gets_its_own_secret_and_a_replacement_keeps_it() {
    let w = world();
    let created = w
        .put("crm", entered_at("https://hooks.example.com/a"), T0)
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.endpoint.secret, secret(1));
    assert_eq!(created.endpoint.url, "https://hooks.example.com/a");
    assert_eq!(created.endpoint.events, [EventType::AudienceEntered].into());
    let replaced = w
        .put("crm", body(json!({"url": "https://hooks.example.com/b", "events": ["user.changed"], "audiences": ["trials"]})), T0 + 5)
        .await
        .unwrap();
    assert!(!replaced.created);
    let endpoint = replaced.endpoint;
    assert_eq!(
        (endpoint.url.as_str(), &endpoint.secret),
        ("https://hooks.example.com/b", &secret(1))
    );
    assert_eq!(endpoint.audiences, Some(["trials".to_owned()].into()));
    assert_eq!((endpoint.created_at, endpoint.updated_at), (T0, T0 + 5));
    let read = w
        .subscriptions
        .get(&caller("ws"), "crm", T0 + 6)
        .await
        .unwrap();
    assert_eq!(read, endpoint);
}

#[tokio::test]
async fn a_workspace_has_at_most_twenty_endpoints_and_may_still_replace_them() {
    let w = world();
    for n in 0..MAX_WEBHOOKS {
        w.put(
            &format!("e{n}"),
            entered_at("https://hooks.example.com/"),
            T0,
        )
        .await
        .unwrap();
    }
    let refused = w
        .put("e20", entered_at("https://hooks.example.com/"), T0)
        .await;
    assert!(
        matches!(refused, Err(AppError::TooManyWebhooks)),
        "{refused:?}"
    );
    assert!(
        w.put("e0", entered_at("https://hooks.example.com/x"), T0)
            .await
            .is_ok(),
        "a replacement is no new one"
    );
    let other = w
        .subscriptions
        .put(
            &caller("other"),
            "e20",
            entered_at("https://hooks.example.com/"),
            false,
            T0,
        )
        .await;
    assert!(other.is_ok(), "another workspace counts its own");
    w.subscriptions
        .delete(&caller("ws"), "e3", T0)
        .await
        .unwrap();
    assert!(w
        .put("e20", entered_at("https://hooks.example.com/"), T0)
        .await
        .is_ok());
}

#[tokio::test]
async fn the_profile_is_included_only_for_a_key_that_reads_pii() {
    let w = world();
    let asked = || {
        body(
            json!({"url": "https://hooks.example.com/", "events": ["user.changed"], "include": ["profile"]}),
        )
    };
    let refused = w.put("crm", asked(), T0).await;
    assert!(
        matches!(refused, Err(AppError::ProfileNeedsPiiScope)),
        "{refused:?}"
    );
    assert!(
        w.store.endpoints.lock().unwrap().is_empty(),
        "nothing stored"
    );
    let allowed = w
        .subscriptions
        .put(&caller("ws"), "crm", asked(), true, T0)
        .await
        .unwrap();
    assert!(allowed.endpoint.include_profile);
}

#[tokio::test]
async fn an_id_no_webhook_can_have_is_refused_before_the_body_and_the_store() {
    let w = world();
    let bad = "not an id!";
    let refused = w.put(bad, body(json!({"url": "http://x"})), T0).await;
    assert!(
        matches!(
            refused,
            Err(AppError::Request(RequestError::InvalidWebhookId))
        ),
        "{refused:?}"
    );
    let ws = caller("ws");
    assert!(matches!(
        w.subscriptions.get(&ws, bad, T0).await,
        Err(AppError::WebhookNotFound)
    ));
    assert!(matches!(
        w.subscriptions.rotate(&ws, bad, T0).await,
        Err(AppError::WebhookNotFound)
    ));
    assert!(matches!(
        w.subscriptions.delete(&ws, bad, T0).await,
        Err(AppError::WebhookNotFound)
    ));
    assert!(w.store.journal.calls().is_empty());
    let invalid = w
        .put("crm", body(json!({"url": "http://hooks.example.com/"})), T0)
        .await;
    assert!(
        matches!(invalid, Err(AppError::Request(RequestError::Body(_)))),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn a_rotated_secret_keeps_the_previous_one_signing_for_a_day_and_drops_older_ones() {
    let w = world();
    w.put("crm", entered_at("https://hooks.example.com/"), T0)
        .await
        .unwrap();
    let ws = caller("ws");
    let rotated = w.subscriptions.rotate(&ws, "crm", T0 + 10).await.unwrap();
    let day = PREVIOUS_SECRET_SIGNS_FOR.as_millis() as i64;
    assert_eq!(rotated.secret, secret(2));
    assert_eq!(rotated.previous_secret, Some((secret(1), T0 + 10 + day)));
    let again = w.subscriptions.rotate(&ws, "crm", T0 + 20).await.unwrap();
    assert_eq!(
        (again.secret, again.previous_secret),
        (secret(3), Some((secret(2), T0 + 20 + day)))
    );
    let missing = w.subscriptions.rotate(&ws, "nothing", T0).await;
    assert!(
        matches!(missing, Err(AppError::WebhookNotFound)),
        "{missing:?}"
    );
}

#[tokio::test]
async fn endpoints_are_listed_by_id_a_page_at_a_time() {
    let w = world();
    for id in ["c", "a", "b"] {
        w.put(id, entered_at("https://hooks.example.com/"), T0)
            .await
            .unwrap();
    }
    w.subscriptions
        .put(
            &caller("other"),
            "z",
            entered_at("https://hooks.example.com/"),
            false,
            T0,
        )
        .await
        .unwrap();
    let ws = caller("ws");
    let first = w
        .subscriptions
        .list(&ws, Paged::Webhooks.query(Some("2"), None), T0)
        .await
        .unwrap();
    let ids = |page: &EndpointsPage| {
        page.endpoints
            .iter()
            .map(|e| e.webhook_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["a", "b"]);
    let cursor = first.next_cursor.clone().unwrap();
    let next = w
        .subscriptions
        .list(&ws, Paged::Webhooks.query(Some("2"), Some(&cursor)), T0)
        .await
        .unwrap();
    assert_eq!((ids(&next), next.next_cursor), (vec!["c".to_owned()], None));
    let whole = w
        .subscriptions
        .list(&ws, Paged::Webhooks.query(None, None), T0)
        .await
        .unwrap();
    assert_eq!(
        ids(&whole),
        ["a", "b", "c"],
        "one page holds a workspace's most"
    );
    let audiences_cursor = Paged::Audiences.cursor("b");
    assert!(
        Paged::Webhooks
            .query(None, Some(&audiences_cursor))
            .is_err(),
        "another list's cursor is not one"
    );
}

#[tokio::test]
async fn deleting_what_is_not_there_is_done_already() {
    let w = world();
    w.put("crm", entered_at("https://hooks.example.com/"), T0)
        .await
        .unwrap();
    let ws = caller("ws");
    w.subscriptions.delete(&ws, "crm", T0).await.unwrap();
    w.subscriptions.delete(&ws, "crm", T0).await.unwrap();
    assert!(matches!(
        w.subscriptions.get(&ws, "crm", T0).await,
        Err(AppError::WebhookNotFound)
    ));
}

#[tokio::test]
async fn the_rate_limit_comes_first_and_failures_store_nothing() {
    let w = world();
    let blocked = Caller {
        workspace_id: "ws".into(),
        rate: 0,
    };
    let limited = w
        .subscriptions
        .put(&blocked, "bad id!", body(json!({})), false, T0)
        .await;
    assert!(
        matches!(limited, Err(AppError::RateLimited { .. })),
        "{limited:?}"
    );
    w.store.faults.fail("webhooks.put", unavailable(), 1);
    let failed = w
        .put("crm", entered_at("https://hooks.example.com/"), T0)
        .await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
    let no_random = Subscriptions::with_random(
        w.store.clone(),
        MemoryBuilds::default(),
        Arc::new(RateLimiter::new(Arc::new(MemoryCounters::default()))),
        Arc::new(|| Err(PortError::Unavailable("no random bytes".into()))),
    );
    let unsigned = no_random
        .put(
            &caller("ws"),
            "crm",
            entered_at("https://hooks.example.com/"),
            false,
            T0,
        )
        .await;
    assert!(matches!(unsigned, Err(AppError::Port(_))), "{unsigned:?}");
    assert!(w.store.endpoints.lock().unwrap().is_empty());
    assert_eq!(
        *w.made.lock().unwrap(),
        1,
        "the failed put's secret was made, and not kept"
    );
}

fn logged_at(at: i64, n: usize) -> LoggedAttempt {
    LoggedAttempt {
        at,
        message_id: format!("msg_ev{n}"),
        user_id: "u1".into(),
        sequence: n as u64,
        body: "{}".into(),
        status: crate::app::ports::DeliveryStatus::Delivered,
        http_status: Some(200),
        error: None,
        latency_ms: Some(80),
        next_attempt_at: None,
    }
}

#[tokio::test]
async fn an_endpoint_s_attempt_log_is_read_newest_first_a_page_at_a_time() {
    let w = world();
    for id in ["crm", "ops"] {
        w.put(id, entered_at("https://hooks.example.com/"), T0)
            .await
            .unwrap();
    }
    // A line of an endpoint that had the id before this one: not shown.
    let before = logged_at(T0 - 1, 99);
    w.store.record("ws", "crm", &before).await.unwrap();
    for n in 1..=5 {
        let line = logged_at(T0 + n as i64, n);
        w.store.record("ws", "crm", &line).await.unwrap();
        w.store
            .record("ws", "ops", &logged_at(T0, 100 + n))
            .await
            .unwrap();
    }
    let ws = caller("ws");
    let crm = Paged::Deliveries { webhook_id: "crm" };
    let page = |cursor: Option<String>| {
        let query = crm.query(Some("2"), cursor.as_deref());
        let subscriptions = &w.subscriptions;
        let ws = &ws;
        async move {
            subscriptions
                .deliveries(ws, "crm", query, T0)
                .await
                .unwrap()
        }
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let found = page(cursor).await;
        seen.extend(found.attempts.iter().map(|l| l.message_id.clone()));
        cursor = found.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        ["msg_ev5", "msg_ev4", "msg_ev3", "msg_ev2", "msg_ev1"]
    );

    let ops_cursor = Paged::Deliveries { webhook_id: "ops" }.cursor(&log_place(T0, "msg_ev103"));
    assert!(
        crm.query(None, Some(&ops_cursor)).is_err(),
        "another endpoint's cursor is not one"
    );
    assert!(
        crm.query(None, Some("MTIz")).is_err(),
        "nor one no page gave"
    );
    let missing = w
        .subscriptions
        .deliveries(&ws, "gone", crm.query(None, None), T0)
        .await;
    assert!(
        matches!(missing, Err(AppError::WebhookNotFound)),
        "{missing:?}"
    );
    let elsewhere = w
        .subscriptions
        .deliveries(&caller("other"), "crm", crm.query(None, None), T0)
        .await;
    assert!(
        matches!(elsewhere, Err(AppError::WebhookNotFound)),
        "another workspace's endpoint is not there"
    );
}

#[tokio::test]
async fn a_replay_is_scheduled_for_a_live_endpoint_from_its_creation_at_the_earliest() {
    let w = world();
    w.put("crm", entered_at("https://hooks.example.com/"), T0)
        .await
        .unwrap();
    let ws = caller("ws");
    let asked = |since_ms| {
        Ok(ReplayRequest {
            since_ms,
            until_ms: T0 + 60_000,
            only: Some(crate::app::ports::DeliveryStatus::GivenUp),
        })
    };
    let replay_id = w
        .subscriptions
        .replay(&ws, "crm", asked(T0 - 3_600_000), T0 + 60_000)
        .await
        .unwrap();
    assert!(
        replay_id.starts_with("rpl_") && replay_id.len() == 4 + 24,
        "{replay_id}"
    );
    let scheduled = w.replays.replays.lock().unwrap().clone();
    assert_eq!(
        scheduled,
        [ReplayTask {
            replay_id,
            workspace_id: "ws".into(),
            webhook_id: "crm".into(),
            since_ms: T0,
            until_ms: T0 + 60_000,
            only: Some(crate::app::ports::DeliveryStatus::GivenUp),
            after: None,
        }],
        "an endpoint made again under an old id replays none of its predecessor's"
    );

    let refused = |result: Result<String, AppError>| format!("{:?}", result.unwrap_err());
    let unknown = w.subscriptions.replay(&ws, "nope", asked(T0), T0).await;
    assert_eq!(refused(unknown), "WebhookNotFound");
    let invalid = w
        .subscriptions
        .replay(&ws, "crm", Err(RequestError::InvalidWebhookId), T0)
        .await;
    assert!(matches!(invalid, Err(AppError::Request(_))));
    w.store
        .disable(
            "ws",
            "crm",
            crate::app::ports::Disabling {
                reason: crate::domain::webhook::DisabledReason::Gone,
                at: T0,
                updated_at: T0,
                failing_since: None,
            },
        )
        .await
        .unwrap();
    let disabled = w.subscriptions.replay(&ws, "crm", asked(T0), T0).await;
    assert_eq!(refused(disabled), "WebhookDisabled");
    assert_eq!(
        w.replays.replays.lock().unwrap().len(),
        1,
        "nothing more scheduled"
    );
}

#[tokio::test]
async fn a_replay_that_cannot_be_scheduled_is_an_unavailable_answer() {
    let w = world();
    w.put("crm", entered_at("https://hooks.example.com/"), T0)
        .await
        .unwrap();
    w.replays.faults.fail("replays.schedule", unavailable(), 1);
    let asked = Ok(ReplayRequest {
        since_ms: T0,
        until_ms: T0 + 1,
        only: None,
    });
    let failed = w
        .subscriptions
        .replay(&caller("ws"), "crm", asked, T0)
        .await;
    assert!(
        matches!(failed, Err(AppError::Port(PortError::Unavailable(_)))),
        "{failed:?}"
    );
}
