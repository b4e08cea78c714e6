use super::*;
use crate::app::fakes::*;
use crate::app::ports::{DeliveryStatus, Disabling, LoggedAttempt, Reply, StoredUser};
use crate::contract::ENDPOINT_LANE;
use crate::domain::webhook::{
    log_place, DisabledReason, EventType, Secret, ATTEMPT_TIMEOUT, RETRY_WAITS,
};
use crate::domain::{Changes, ProfileField, Stamp};
use lambda_http::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::json;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::time::SystemTime;

const T0: i64 = 1_800_000_000_000;
/// A wake's invocation that never runs out of time.
const NO_DEADLINE: i64 = i64::MAX;
const WS: &str = "ws1";
const WEBHOOK: &str = "wh1";
const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OLD_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const URL: &str = "https://hooks.example.com/vibefollow";

type Under = Deliveries<MemoryWebhooks, MemoryLanes, MemoryWakes, ScriptedSender, MemoryUsers>;

struct World {
    deliveries: Under,
    webhooks: MemoryWebhooks,
    lanes: MemoryLanes,
    wakes: MemoryWakes,
    sender: ScriptedSender,
    users: MemoryUsers,
    now: Arc<AtomicI64>,
}

fn endpoint() -> Endpoint {
    Endpoint {
        webhook_id: WEBHOOK.into(),
        url: URL.into(),
        events: BTreeSet::from([EventType::AudienceEntered]),
        audiences: None,
        include_profile: false,
        secret: Secret(SECRET.into()),
        previous_secret: None,
        created_at: T0,
        updated_at: T0,
        failing_since: None,
        disabled: None,
    }
}

fn world_at(start: i64, interleaving: Interleaving, per_wake: usize) -> World {
    let webhooks = MemoryWebhooks::default();
    webhooks
        .endpoints
        .lock()
        .unwrap()
        .insert((WS.into(), WEBHOOK.into()), endpoint());
    let lanes = MemoryLanes {
        interleaving: interleaving.clone(),
        ..MemoryLanes::default()
    };
    let wakes = MemoryWakes {
        interleaving: interleaving.clone(),
        ..MemoryWakes::default()
    };
    let sender = ScriptedSender {
        interleaving,
        ..ScriptedSender::default()
    };
    let now = Arc::new(AtomicI64::new(start));
    let clock = Arc::clone(&now);
    let users = MemoryUsers::default();
    let deliveries = Deliveries::new(
        webhooks.clone(),
        lanes.clone(),
        wakes.clone(),
        sender.clone(),
        users.clone(),
        Arc::new(move || clock.load(SeqCst)),
        Arc::new(|| 1.0),
    )
    .with_per_wake(per_wake);
    World {
        deliveries,
        webhooks,
        lanes,
        wakes,
        sender,
        users,
        now,
    }
}

fn world() -> World {
    world_at(T0, Interleaving::default(), DELIVERIES_PER_WAKE)
}

fn lane(user: &str) -> Lane {
    Lane {
        workspace_id: WS.into(),
        webhook_id: WEBHOOK.into(),
        user_id: user.into(),
    }
}

fn message(n: usize) -> WebhookEvent {
    WebhookEvent {
        event_type: EventType::AudienceEntered,
        event_id: format!("ev{n}"),
        workspace_id: WS.into(),
        external_user_id: "u1".into(),
        audience_id: Some("trial-ending".into()),
        timestamp: "2027-01-15T08:00:00.000Z".into(),
        user_version: n as u64,
        data: json!({"audience_id": "trial-ending", "n": n}),
    }
}

/// Message `n` of the user's version `version`.
fn message_of_version(n: usize, version: u64) -> WebhookEvent {
    WebhookEvent {
        user_version: version,
        ..message(n)
    }
}

impl World {
    async fn enqueue(&self, user: &str, n: usize) {
        self.deliveries
            .enqueue(&lane(user), &message(n))
            .await
            .expect("appended");
    }

    fn advance(&self, by: Duration) {
        self.now.fetch_add(millis(by), SeqCst);
    }

    /// The `webhook-id` of each attempt, in order.
    fn attempted(&self) -> Vec<String> {
        self.sender
            .received()
            .iter()
            .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
            .collect()
    }

    fn sequences(&self) -> Vec<u64> {
        self.sender
            .received()
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(&r.body).unwrap()["sequence"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }
}

fn ids(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("msg_ev{n}")).collect()
}

#[tokio::test]
async fn an_append_wakes_an_idle_lane_and_not_one_a_worker_holds() {
    let w = world();
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::ZERO)], "one wake");

    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, 2);
    assert_eq!(w.attempted(), ids(1..=2));
    assert!(w.wakes.take().is_empty(), "the lane is done: no fresh wake");

    // The worker let the lane go: the next append wakes one again.
    w.enqueue("u1", 3).await;
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::ZERO)]);
}

#[tokio::test]
async fn events_that_reached_the_lane_swapped_go_out_in_the_user_s_order_behind_its_head() {
    let w = world();
    for (n, version) in [(1, 5), (2, 30), (3, 10), (4, 20)] {
        w.deliveries
            .enqueue(&lane("u1"), &message_of_version(n, version))
            .await
            .unwrap();
    }
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, 4);
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev3", "msg_ev4", "msg_ev2"]);
    assert_eq!(
        w.sequences(),
        [1, 2, 3, 4],
        "sequence still rises along the lane"
    );
    assert_eq!(w.lanes.state(&lane("u1")).arranged, 1, "one arrangement");
}

#[tokio::test]
async fn the_head_keeps_its_place_it_may_have_been_sent() {
    let w = world();
    for (n, version) in [(1, 30), (2, 10)] {
        w.deliveries
            .enqueue(&lane("u1"), &message_of_version(n, version))
            .await
            .unwrap();
    }
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev2"]);
}

#[tokio::test]
async fn a_retried_head_keeps_its_place_and_those_behind_it_are_ordered() {
    let w = world();
    w.sender.answer([replied(503)]);
    w.deliveries
        .enqueue(&lane("u1"), &message_of_version(1, 30))
        .await
        .unwrap();
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    for (n, version) in [(2, 50), (3, 40)] {
        w.deliveries
            .enqueue(&lane("u1"), &message_of_version(n, version))
            .await
            .unwrap();
    }
    w.advance(RETRY_WAITS[0].mul_f64(1.2));
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev1", "msg_ev3", "msg_ev2"]);
    assert_eq!(w.sequences(), [1, 1, 2, 3]);
}

#[tokio::test]
async fn a_wake_short_of_time_for_an_attempt_hands_its_lane_to_a_fresh_one() {
    let w = world();
    w.enqueue("u1", 1).await;
    w.wakes.take();
    let deadline = T0 + millis(ATTEMPT_TIMEOUT + DEADLINE_MARGIN) - 1;
    let drained = w.deliveries.drain(&lane("u1"), deadline).await.unwrap();
    assert_eq!(drained, Drained::default());
    assert!(w.sender.received().is_empty(), "no attempt started");
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::ZERO)]);
    let drained = w.deliveries.drain(&lane("u1"), deadline + 1).await.unwrap();
    assert_eq!(drained.delivered, 1);
}

#[tokio::test]
async fn each_attempt_is_signed_as_standard_webhooks_verifies_it() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let w = world_at(millis(now), Interleaving::default(), DELIVERIES_PER_WAKE);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    let [sent] = w.sender.received().try_into().unwrap();
    assert_eq!(sent.url, URL);
    let mut headers = HeaderMap::new();
    for (name, value) in &sent.headers {
        headers.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(sent.body.as_bytes(), &headers)
        .expect("the specification's library verifies it");
    assert_eq!(sent.header("webhook-id"), Some("msg_ev1"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(
        body,
        json!({"type": "audience.entered", "timestamp": "2027-01-15T08:00:00.000Z",
               "webhook_id": WEBHOOK, "sequence": 1,
               "data": {"audience_id": "trial-ending", "n": 1}})
    );
}

#[tokio::test]
async fn the_previous_secret_signs_beside_the_new_one_until_it_expires() {
    let w = world();
    w.webhooks
        .endpoints
        .lock()
        .unwrap()
        .get_mut(&(WS.to_owned(), WEBHOOK.to_owned()))
        .unwrap()
        .previous_secret = Some((Secret(OLD_SECRET.into()), T0 + 1_000));
    for n in 1..=2 {
        w.enqueue("u1", n).await;
        w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
        w.advance(Duration::from_secs(1));
    }
    let signatures: Vec<usize> = w
        .sender
        .received()
        .iter()
        .map(|r| r.header("webhook-signature").unwrap().split(' ').count())
        .collect();
    assert_eq!(signatures, [2, 1], "both sign, then the new one alone");
}

#[tokio::test]
async fn a_later_event_waits_while_an_earlier_one_is_retried() {
    let w = world();
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    w.enqueue("u2", 3).await;
    w.wakes.take();

    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.delivered, drained.failed), (0, 1));
    assert_eq!(
        w.wakes.take(),
        [(lane("u1"), RETRY_WAITS[0])],
        "the schedule's first step"
    );
    // Another user's lane is not held by it.
    w.deliveries.drain(&lane("u2"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev3"]);

    // The wake sent again early attempts nothing and keeps the timer.
    w.advance(Duration::from_secs(2));
    let early = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(early, Drained::default());
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::from_secs(3))]);

    w.advance(Duration::from_secs(3));
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, 2);
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev3", "msg_ev1", "msg_ev2"]);
}

#[tokio::test]
async fn retry_after_replaces_the_schedules_step() {
    let w = world();
    w.sender.answer([Ok(Reply {
        status: 429,
        retry_after: Some("120".into()),
    })]);
    w.enqueue("u1", 1).await;
    w.wakes.take();
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::from_secs(120))]);
    assert_eq!(w.lanes.state(&lane("u1")).next_at, T0 + 120_000);
}

#[tokio::test]
async fn the_schedule_gives_a_message_up_after_its_last_attempt_and_the_lane_goes_on() {
    let w = world();
    let attempts = RETRY_WAITS.len() + 1;
    w.sender.answer((0..attempts).map(|i| match i % 2 {
        0 => replied(500),
        _ => Err(PortError::Unavailable("timeout".into())),
    }));
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    w.wakes.take();
    let mut waits = Vec::new();
    let mut last = Drained::default();
    for _ in 0..attempts {
        last = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
        if let Some((_, wait)) = w.wakes.take().pop() {
            waits.push(wait);
            w.advance(wait);
        }
    }
    assert_eq!(waits, RETRY_WAITS, "each step of the schedule, in order");
    assert_eq!((last.given_up, last.delivered), (1, 1));
    assert_eq!(w.attempted().len(), attempts + 1);
    assert_eq!(w.attempted().last().map(String::as_str), Some("msg_ev2"));
}

#[tokio::test]
async fn a_deleted_endpoints_lane_is_given_up_unsent() {
    let w = world();
    w.enqueue("u1", 1).await;
    w.webhooks.endpoints.lock().unwrap().clear();
    w.enqueue("u1", 2).await;
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.given_up, 2);
    assert!(w.attempted().is_empty(), "no attempt to a deleted endpoint");
}

const OPS: &str = "ops";
const OPS_URL: &str = "https://ops.example.com/hooks";

impl World {
    /// A second endpoint of the workspace, taking `webhook.disabled` only.
    fn add_ops_endpoint(&self) {
        let ops = Endpoint {
            webhook_id: OPS.into(),
            url: OPS_URL.into(),
            events: BTreeSet::from([EventType::WebhookDisabled]),
            ..endpoint()
        };
        self.webhooks
            .endpoints
            .lock()
            .unwrap()
            .insert((WS.into(), OPS.into()), ops);
    }

    fn stored(&self) -> Endpoint {
        let key = (WS.to_owned(), WEBHOOK.to_owned());
        self.webhooks.endpoints.lock().unwrap()[&key].clone()
    }

    /// Changes the stored endpoint as `change` says.
    fn change_endpoint(&self, change: impl FnOnce(&mut Endpoint)) {
        let key = (WS.to_owned(), WEBHOOK.to_owned());
        change(
            self.webhooks
                .endpoints
                .lock()
                .unwrap()
                .get_mut(&key)
                .unwrap(),
        );
    }

    fn set_failing_since(&self, since: i64) {
        self.change_endpoint(|endpoint| endpoint.failing_since = Some(since));
    }

    /// What the ops endpoint received, drained from its lane: (`webhook-id`, body).
    async fn ops_received(&self) -> Vec<(String, Value)> {
        let ops_lane = Lane {
            workspace_id: WS.into(),
            webhook_id: OPS.into(),
            user_id: ENDPOINT_LANE.into(),
        };
        self.deliveries.drain(&ops_lane, NO_DEADLINE).await.unwrap();
        self.sender
            .received()
            .iter()
            .filter(|r| r.url == OPS_URL)
            .map(|r| {
                let id = r.header("webhook-id").unwrap_or_default().to_owned();
                (id, serde_json::from_str(&r.body).unwrap())
            })
            .collect()
    }
}

#[tokio::test]
async fn a_410_disables_the_endpoint_at_once_its_lane_is_emptied_unsent_and_the_others_are_told() {
    let w = world();
    w.add_ops_endpoint();
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.given_up, drained.delivered), (2, 0));
    assert_eq!(w.attempted(), ["msg_ev1"], "nothing sent after the 410");
    let disabled = Disabled {
        reason: DisabledReason::Gone,
        at: T0,
        announced: true,
    };
    assert_eq!(w.stored().disabled, Some(disabled));

    let [(id, body)] = w.ops_received().await.try_into().unwrap();
    assert_eq!(id, format!("msg_disabled_{WEBHOOK}_{T0}"));
    assert_eq!(body["type"], "webhook.disabled");
    assert_eq!(body["webhook_id"], OPS, "the receiving endpoint's id");
    assert_eq!(
        body["data"],
        json!({"webhook_id": WEBHOOK, "reason": "gone", "disabled_at": "2027-01-15T08:00:00.000Z"})
    );

    // No new event is appended for it.
    let appended = w.deliveries.fan_out(&message(3)).await.unwrap();
    assert_eq!(appended, 0, "a disabled endpoint takes no event");
}

#[tokio::test]
async fn five_days_without_a_2xx_disable_the_endpoint_and_a_2xx_ends_the_streak() {
    let w = world();
    w.add_ops_endpoint();
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.stored().failing_since, Some(T0), "the streak starts");

    w.advance(RETRY_WAITS[0].mul_f64(1.2));
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.stored().failing_since, None, "a 2xx ends it");

    let day = 24 * 3600 * 1000;
    w.set_failing_since(w.now.load(SeqCst) - 5 * day + 1);
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 2).await;
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(
        drained.failed, 1,
        "a millisecond short of five days: retried"
    );
    assert_eq!(w.stored().disabled, None);

    let wait = RETRY_WAITS[0].mul_f64(1.2);
    w.advance(wait);
    w.enqueue("u1", 3).await;
    w.sender.answer([replied(500)]);
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.given_up, drained.failed), (2, 0), "both given up");
    let disabled = w.stored().disabled.expect("disabled");
    assert_eq!(disabled.reason, DisabledReason::Failing);
    assert_eq!(disabled.at, w.now.load(SeqCst));
    let [(_, body)] = w.ops_received().await.try_into().unwrap();
    assert_eq!(body["data"]["reason"], "failing");
}

#[tokio::test]
async fn a_disabling_whose_announcement_was_not_noted_is_announced_again_under_its_id() {
    let w = world();
    w.add_ops_endpoint();
    w.webhooks.faults.fail(
        "webhooks.mark_announced",
        PortError::Unavailable("down".into()),
        1,
    );
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    assert!(w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.is_err());
    assert!(!w.stored().disabled.unwrap().announced);

    // The wake comes again: the endpoint is disabled, its disabling announced again.
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.given_up, 1);
    assert!(w.stored().disabled.unwrap().announced);
    let received = w.ops_received().await;
    assert_eq!(received.len(), 2, "appended twice");
    assert_eq!(
        received[0].0, received[1].0,
        "under one id: the receiver drops the repeat"
    );

    // Announced: later lanes of the endpoint are emptied without another.
    w.enqueue("u2", 2).await;
    w.deliveries.drain(&lane("u2"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.ops_received().await.len(), 2);
    let to_it = w.sender.received().iter().filter(|r| r.url == URL).count();
    assert_eq!(to_it, 1, "one attempt in all to the disabled endpoint");
}

#[tokio::test]
async fn a_put_enables_a_disabled_endpoint_again() {
    let w = world();
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert!(w.stored().disabled.is_some());

    w.webhooks.put(WS, &endpoint(), 20).await.unwrap();
    assert_eq!(
        (w.stored().disabled, w.stored().failing_since),
        (None, None)
    );
    w.advance(ENDPOINTS_KEPT_FOR);
    assert_eq!(w.deliveries.fan_out(&message(2)).await.unwrap(), 1);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev2"]);
}

#[tokio::test]
async fn the_time_factor_divides_the_schedule_and_the_failing_allowance() {
    let w = world_at(T0, Interleaving::default(), DELIVERIES_PER_WAKE);
    let deliveries = w.deliveries.with_time_factor(3_600.0);
    let w = World { deliveries, ..w };
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    w.wakes.take();
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(
        w.wakes.take(),
        [(lane("u1"), RETRY_WAITS[0].div_f64(3_600.0))],
        "5 s become 1.4 ms"
    );

    // Five days become two minutes.
    w.set_failing_since(T0 - 120_000);
    w.advance(Duration::from_secs(1));
    w.sender.answer([replied(500)]);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(
        w.stored().disabled.map(|d| d.reason),
        Some(DisabledReason::Failing)
    );
}

#[tokio::test]
async fn a_long_lane_is_drained_a_bounded_number_at_a_time() {
    let w = world();
    for n in 1..=DELIVERIES_PER_WAKE + 3 {
        w.enqueue("u1", n).await;
    }
    w.wakes.take();
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, DELIVERIES_PER_WAKE);
    assert_eq!(
        w.wakes.take(),
        [(lane("u1"), Duration::ZERO)],
        "the rest to a fresh wake"
    );
    assert_eq!(
        w.deliveries
            .drain(&lane("u1"), NO_DEADLINE)
            .await
            .unwrap()
            .delivered,
        3
    );
}

#[tokio::test]
async fn a_delivery_kept_past_its_expiry_is_passed_and_the_lane_goes_on() {
    let w = world();
    for n in 1..=3 {
        w.enqueue("u1", n).await;
    }
    w.lanes.expire(&lane("u1"), 2);
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.delivered, drained.given_up), (2, 1));
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev3"]);
    let state = w.lanes.state(&lane("u1"));
    assert_eq!((state.done, state.lease_until), (3, 0), "emptied, let go");
}

#[tokio::test]
async fn sequences_increase_along_a_lane_whatever_block_each_instance_holds() {
    let w = world();
    let other = Deliveries::new(
        w.webhooks.clone(),
        w.lanes.clone(),
        w.wakes.clone(),
        w.sender.clone(),
        w.users.clone(),
        Arc::new(|| T0),
        Arc::new(|| 1.0),
    );
    // This instance holds 1…100, the other takes 101…200 and appends 101 first.
    w.enqueue("u0", 0).await;
    other.enqueue(&lane("u1"), &message(1)).await.unwrap();
    w.enqueue("u1", 2).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(w.sequences(), [101, 201], "behind the lane, a fresh block");
    assert_eq!(w.lanes.journal.count("lanes.sequence_block"), 3);
}

#[tokio::test]
async fn a_wake_that_was_not_sent_is_sent_when_its_message_comes_again_lease_or_not() {
    let w = world();
    w.wakes.faults.fail("wakes.wake", unavailable(), 1);
    assert!(w
        .deliveries
        .enqueue(&lane("u1"), &message(1))
        .await
        .is_err());
    w.enqueue("u1", 2).await;
    assert!(w.wakes.take().is_empty(), "the lease looks held");

    // Another message again wakes nobody: the lease is not its.
    w.enqueue("u1", 2).await;
    assert!(w.wakes.take().is_empty(), "not the lease's message");

    // The fan-out's message comes again before the lease it took lapsed (its append came
    // late in its invocation): that lease is its own, so it wakes.
    w.advance(LANE_LEASE / 2);
    w.enqueue("u1", 1).await;
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::ZERO)]);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(
        w.attempted(),
        ["msg_ev1", "msg_ev1", "msg_ev2", "msg_ev2"],
        "repeats, dropped by id (of the user's first version: put before the second)"
    );
}

#[tokio::test]
async fn a_message_again_after_a_worker_moved_its_lane_wakes_nobody_and_keeps_the_lease() {
    let w = world();
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    assert_eq!(w.wakes.take(), [(lane("u1"), Duration::ZERO)]);
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.failed, 1, "postponed to its retry");
    let postponed = w.lanes.state(&lane("u1")).lease_until;
    assert_eq!(w.wakes.take().len(), 1, "the retry's wake");

    // The fan-out's message comes again (another lane of it had failed, say): the
    // worker's move showed its wake arrived, so no second worker, no shorter lease.
    w.enqueue("u1", 1).await;
    assert!(w.wakes.take().is_empty(), "a worker holds the lane");
    assert_eq!(w.lanes.state(&lane("u1")).lease_until, postponed);
}

#[tokio::test]
async fn an_event_goes_to_each_endpoint_that_subscribes_to_it_each_in_its_own_lane() {
    let w = world();
    let add = |id: &str, events: &[EventType], audiences: Option<&[&str]>| {
        let endpoint = Endpoint {
            webhook_id: id.into(),
            events: events.iter().copied().collect(),
            audiences: audiences.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
            ..endpoint()
        };
        w.webhooks
            .endpoints
            .lock()
            .unwrap()
            .insert((WS.into(), id.into()), endpoint);
    };
    add("users-only", &[EventType::UserChanged], None);
    add(
        "trials",
        &[EventType::AudienceEntered],
        Some(&["trial-ending"]),
    );
    add(
        "others",
        &[EventType::AudienceEntered],
        Some(&["churn-risk"]),
    );
    assert_eq!(
        w.deliveries.fan_out(&message(1)).await.unwrap(),
        2,
        "wh1 and trials"
    );
    let lanes: BTreeSet<String> = w
        .lanes
        .lanes
        .lock()
        .unwrap()
        .keys()
        .map(|l| l.webhook_id.clone())
        .collect();
    assert_eq!(
        lanes,
        BTreeSet::from(["trials".to_owned(), WEBHOOK.to_owned()])
    );

    let other_workspace = WebhookEvent {
        workspace_id: "ws2".into(),
        ..message(2)
    };
    assert_eq!(w.deliveries.fan_out(&other_workspace).await.unwrap(), 0);
}

#[tokio::test]
async fn a_workspaces_endpoints_are_read_once_in_a_while_not_once_an_event() {
    let w = world();
    for n in 0..3 {
        w.deliveries.fan_out(&message(n)).await.unwrap();
    }
    assert_eq!(w.webhooks.journal.count("webhooks.endpoints"), 1);
    w.webhooks.endpoints.lock().unwrap().clear();
    w.advance(ENDPOINTS_KEPT_FOR);
    assert_eq!(
        w.deliveries.fan_out(&message(3)).await.unwrap(),
        0,
        "a deletion seen"
    );
    assert_eq!(w.webhooks.journal.count("webhooks.endpoints"), 2);
}

/// How the queues give work back in the property test: a wake whose worker died comes
/// again after the fast queue's visibility timeout; a fan-out message whose enqueue
/// failed, after the intake queue's (90 s), which as its append saw it is 90 s less
/// how far into its invocation the append ran: drawn per retry, after the lease it
/// took lapsed or (an append late in its invocation) before.
const WAKE_VISIBILITY: Duration = Duration::from_secs(30);
const INTAKE_VISIBILITY: Duration = Duration::from_secs(90);
const INTAKE_VISIBILITY_LATE_APPEND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Work {
    Enqueue(usize, usize),
    Wake(usize),
}

/// What goes wrong in a run of the property test, each drawn by proptest, in order of
/// the calls it meets.
#[derive(Debug)]
struct Mishaps {
    /// Attempts answered 500 (true) or 200.
    failures: Vec<bool>,
    /// Wakes not sent.
    unsent_wakes: Vec<bool>,
    /// Appends and advances applied whose answer was lost.
    lost_appends: Vec<bool>,
    lost_advances: Vec<bool>,
    /// Per task: dies after so many polls.
    crashes: Vec<Option<usize>>,
    /// Per wake: delivered twice.
    twice: Vec<bool>,
    /// Per fan-out message that comes again: its append ran late in its invocation.
    late_appends: Vec<bool>,
}

/// Lines up a fault of `call` where `pattern` says true, a pass where false.
fn line_up(faults: &Faults, call: &str, pattern: &[bool]) {
    for &fails in pattern {
        match fails {
            true => faults.fail(call, unavailable(), 1),
            false => faults.pass(call, 1),
        }
    }
}

/// Runs the appends and every wake they lead to, in time, each batch of work due at
/// one moment side by side (interleaved by `seed`), with `mishaps`; until nothing is
/// left to do. A lane wake hands on after 3 deliveries, so that the hand-over runs often.
fn run(seed: u64, appends: &[usize], mishaps: &Mishaps) -> World {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let w = world_at(T0, Interleaving::seeded(seed), 3);
    w.sender.answer(
        mishaps
            .failures
            .iter()
            .map(|&fail| replied(if fail { 500 } else { 200 })),
    );
    line_up(&w.wakes.faults, "wakes.wake", &mishaps.unsent_wakes);
    line_up(&w.lanes.lost_answers, "lanes.append", &mishaps.lost_appends);
    line_up(
        &w.lanes.lost_answers,
        "lanes.advance",
        &mishaps.lost_advances,
    );
    let mut pending: BTreeMap<(i64, usize), Work> = BTreeMap::new();
    let mut order = 0;
    for (n, &user) in appends.iter().enumerate() {
        pending.insert((T0 + 10 * (n as i64 / 3), order), Work::Enqueue(user, n));
        order += 1;
    }
    let mut crashes = mishaps.crashes.iter().copied();
    let mut twice = mishaps.twice.iter().copied();
    let mut late_appends = mishaps.late_appends.iter().copied();
    let mut rounds = 0;
    rt.block_on(async {
        while let Some((&(at, _), _)) = pending.first_key_value() {
            rounds += 1;
            assert!(rounds < 10_000, "the work never settles");
            w.now.fetch_max(at, SeqCst);
            let due: Vec<Work> = std::iter::from_fn(|| {
                pending
                    .first_key_value()
                    .filter(|((when, _), _)| *when == at)
                    .map(|(&key, _)| key)
                    .and_then(|key| pending.remove(&key))
            })
            .collect();
            let mut again = Vec::new();
            // A wake SQS delivers twice is one message in two workers' hands.
            let tasks = due.into_iter().enumerate().flat_map(|(message, work)| {
                let copies = match work {
                    Work::Wake(_) if twice.next().unwrap_or(false) => 2,
                    _ => 1,
                };
                std::iter::repeat_n((message, work), copies)
            });
            let outcomes = futures::future::join_all(tasks.map(|(message, work)| {
                let crash_after = crashes.next().flatten();
                let w = &w;
                async move {
                    let done = async {
                        match &work {
                            Work::Enqueue(user, n) => w
                                .deliveries
                                .enqueue(&lane(&format!("u{user}")), &shuffled(*n))
                                .await
                                .map(|_| ()),
                            Work::Wake(user) => w
                                .deliveries
                                .drain(&lane(&format!("u{user}")), NO_DEADLINE)
                                .await
                                .map(|_| ()),
                        }
                    };
                    // A worker that dies after a few polls: its calls so far stand.
                    let completed = match crash_after {
                        Some(polls) => {
                            futures::pin_mut!(done);
                            let dies = async {
                                for _ in 0..polls {
                                    tokio::task::yield_now().await;
                                }
                            };
                            futures::pin_mut!(dies);
                            match futures::future::select(done, dies).await {
                                futures::future::Either::Left((result, _)) => result.is_ok(),
                                futures::future::Either::Right(_) => false,
                            }
                        }
                        None => done.await.is_ok(),
                    };
                    (message, work, completed)
                }
            }))
            .await;
            // A message comes again only if no worker that had it completed: the first
            // that does deletes it for both.
            let deleted: HashSet<usize> = outcomes
                .iter()
                .filter(|(_, _, completed)| *completed)
                .map(|(message, _, _)| *message)
                .collect();
            let mut returned = HashSet::new();
            for (message, work, _) in outcomes {
                if !deleted.contains(&message) && returned.insert(message) {
                    let after = match work {
                        Work::Enqueue(..) if late_appends.next().unwrap_or(true) => {
                            INTAKE_VISIBILITY_LATE_APPEND
                        }
                        Work::Enqueue(..) => INTAKE_VISIBILITY,
                        Work::Wake(_) => WAKE_VISIBILITY,
                    };
                    again.push((at + millis(after), work));
                }
            }
            for (lane, after) in w.wakes.take() {
                let user = lane.user_id[1..].parse().unwrap();
                again.push((w.now.load(SeqCst) + millis(after), Work::Wake(user)));
            }
            for (when, work) in again {
                pending.insert((when, order), work);
                order += 1;
            }
        }
    });
    w
}

/// Message `n`, its user's version out of step with `n` (as the bus and the intake
/// queue can swap events), so that workers arrange their lanes.
fn shuffled(n: usize) -> WebhookEvent {
    message_of_version(n, (n as u64 * 7) % 5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the interleaving of appends and workers, duplicate wakes, failed
    /// attempts, wakes not sent, writes applied with their answers lost and workers
    /// dying mid-way, events appended out of their users' order: every message is
    /// delivered, each lane's first deliveries come in the lane's order (as appended,
    /// then arranged), and no lane is left with work and no worker.
    #[test]
    fn every_message_is_delivered_in_its_lanes_order_whatever_the_interleaving(
        seed in any::<u64>(),
        appends in prop::collection::vec(0..3usize, 1..30),
        failures in prop::collection::vec(any::<bool>(), 0..7),
        unsent_wakes in prop::collection::vec(prop::bool::weighted(0.2), 0..40),
        lost_appends in prop::collection::vec(prop::bool::weighted(0.2), 0..30),
        lost_advances in prop::collection::vec(prop::bool::weighted(0.2), 0..30),
        crashes in prop::collection::vec(prop::option::weighted(0.2, 0..12usize), 0..60),
        twice in prop::collection::vec(any::<bool>(), 0..40),
        late_appends in prop::collection::vec(any::<bool>(), 0..20),
    ) {
        let mishaps = Mishaps { failures, unsent_wakes, lost_appends, lost_advances, crashes, twice, late_appends };
        let w = run(seed, &appends, &mishaps);
        let delivered: Vec<(String, String)> = w
            .sender
            .received()
            .iter()
            .filter(|r| r.answered == Some(200))
            .map(|r| {
                let body: Value = serde_json::from_str(&r.body).unwrap();
                let n = body["data"]["n"].as_u64().unwrap() as usize;
                (format!("u{}", appends[n]), r.header("webhook-id").unwrap().to_owned())
            })
            .collect();
        for user in appends.iter().collect::<BTreeSet<_>>() {
            let lane = lane(&format!("u{user}"));
            let state = w.lanes.state(&lane);
            prop_assert_eq!(state.done, state.tail, "{:?} left with work", lane);
            let mut seen = HashSet::new();
            let appended: Vec<&String> = state
                .queued
                .values()
                .map(|q| &q.message_id)
                .filter(|id| seen.insert(*id))
                .collect();
            let mut seen = HashSet::new();
            let first_deliveries: Vec<&String> = delivered
                .iter()
                .filter(|(u, _)| *u == lane.user_id)
                .map(|(_, id)| id)
                .filter(|id| seen.insert(*id))
                .collect();
            prop_assert_eq!(first_deliveries, appended, "{:?}", lane);
        }
        let expected: BTreeSet<String> = (0..appends.len()).map(|n| format!("msg_ev{n}")).collect();
        let got: BTreeSet<String> = delivered.into_iter().map(|(_, id)| id).collect();
        prop_assert_eq!(got, expected, "every message delivered");
    }
}

impl World {
    /// The endpoint's attempt log, oldest first.
    fn logged(&self) -> Vec<LoggedAttempt> {
        self.webhooks
            .log
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn each_attempt_is_logged_with_its_answer_or_why_none_came_and_what_comes_next() {
    let w = world();
    w.sender.answer([
        replied(500),
        Err(PortError::Unavailable("timeout".into())),
        replied(204),
    ]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    let first_wait = RETRY_WAITS[0];
    w.advance(first_wait);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    w.advance(RETRY_WAITS[1]);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();

    let logged = w.logged();
    let seen: Vec<_> = logged
        .iter()
        .map(|l| {
            (
                l.at,
                l.status,
                l.http_status,
                l.error.as_deref(),
                l.next_attempt_at,
            )
        })
        .collect();
    let second = T0 + millis(first_wait);
    let third = second + millis(RETRY_WAITS[1]);
    assert_eq!(
        seen,
        [
            (T0, DeliveryStatus::Retrying, Some(500), None, Some(second)),
            (
                second,
                DeliveryStatus::Retrying,
                None,
                Some("timeout"),
                Some(third)
            ),
            (third, DeliveryStatus::Delivered, Some(204), None, None),
        ]
    );
    for line in &logged {
        assert_eq!(
            (line.message_id.as_str(), line.user_id.as_str()),
            ("msg_ev1", "u1")
        );
        assert_eq!(line.sequence, 1);
        assert_eq!(line.latency_ms, Some(0), "the test's clock stands still");
        assert_eq!(line.body, w.sender.received()[0].body, "the body as sent");
    }
}

#[tokio::test]
async fn a_delivery_given_up_is_logged_so_and_one_given_up_unsent_says_why() {
    let w = world();
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    let seen: Vec<_> = w
        .logged()
        .iter()
        .map(|l| {
            (
                l.message_id.clone(),
                l.status,
                l.http_status,
                l.error.clone(),
                l.latency_ms,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "msg_ev1".into(),
                DeliveryStatus::GivenUp,
                Some(410),
                None,
                Some(0)
            ),
            (
                "msg_ev2".into(),
                DeliveryStatus::GivenUp,
                None,
                Some("disabled".into()),
                None
            ),
        ]
    );
}

#[tokio::test]
async fn a_log_that_cannot_be_written_holds_nothing_back_and_is_counted() {
    let w = world();
    let throttled = PortError::Unavailable("throttled".into());
    w.webhooks.faults.fail("webhooks.record", throttled, 2);
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.failed, drained.unlogged), (1, 1));
    assert_eq!(
        w.lanes.state(&lane("u1")).next_at,
        T0 + millis(RETRY_WAITS[0]),
        "the retry keeps its schedule"
    );
    w.advance(RETRY_WAITS[0]);
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.delivered, drained.unlogged), (1, 1));
    assert_eq!(
        w.attempted(),
        ["msg_ev1", "msg_ev1"],
        "one retry, no repeat"
    );
    assert!(w.logged().is_empty());
}

#[tokio::test]
async fn a_410_disables_whatever_the_streak_and_five_days_only_the_streak_read() {
    let w = world();
    w.set_failing_since(T0 - 1_000);
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    let asked = w.webhooks.disablings.lock().unwrap().clone();
    let gone = Disabling {
        reason: DisabledReason::Gone,
        at: T0,
        updated_at: T0,
        failing_since: None,
    };
    assert_eq!(
        asked,
        [gone],
        "a 2xx ending the streak meanwhile does not keep a 410 from disabling"
    );

    let w = world();
    let day = 24 * 3600 * 1000;
    w.set_failing_since(T0 - 5 * day);
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    let asked = w.webhooks.disablings.lock().unwrap().clone();
    assert_eq!(asked[0].failing_since, Some(T0 - 5 * day));
}

impl World {
    /// User `u1` of the workspace, at version 7, with an email and a plan.
    fn store_user(&self) {
        let mut user = StoredUser::new("u1");
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("jane@acme.io".into()));
        changes
            .profile
            .insert(ProfileField::Plan, Some("trial".into()));
        user.profile.apply(&Stamp::new(T0, "r1"), &changes);
        user.version = 7;
        let key = (WS.to_owned(), "u1".to_owned());
        self.users.users.lock().unwrap().insert(key, user);
    }

    fn include_profile(&self) {
        self.change_endpoint(|endpoint| endpoint.include_profile = true);
    }

    fn sent_bodies(&self) -> Vec<Value> {
        let received = self.sender.received();
        received
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn an_endpoint_that_asked_for_the_profile_gets_it_as_read_at_each_attempt() {
    // The wall clock: the specification's library checks the timestamp it verifies.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let w = world_at(millis(now), Interleaving::default(), DELIVERIES_PER_WAKE);
    w.store_user();
    w.include_profile();
    w.sender.answer([replied(500)]);
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    // Erased before the retry: the retry says so.
    w.users.users.lock().unwrap().clear();
    w.advance(RETRY_WAITS[0]);
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();

    let [first, retry] = w.sent_bodies().try_into().unwrap();
    let profile = &first["data"]["profile"];
    assert_eq!(profile["email"], "jane@acme.io");
    assert_eq!(profile["traits"]["plan"], "trial");
    assert_eq!(profile["version"], 7);
    assert_eq!(
        first["data"]["audience_id"], "trial-ending",
        "the event's data kept"
    );
    assert_eq!(retry["data"]["profile"], Value::Null, "erased: null");
    for line in w.logged() {
        assert!(
            !line.body.contains("jane"),
            "the log keeps no profile: {}",
            line.body
        );
    }
    // Signed as sent, profile included.
    let sent = &w.sender.received()[0];
    let mut headers = HeaderMap::new();
    for (name, value) in &sent.headers {
        headers.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let verified = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(sent.body.as_bytes(), &headers);
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn no_profile_is_read_or_sent_unless_asked_for_nor_for_an_endpoint_s_own_event() {
    let w = world();
    w.store_user();
    w.enqueue("u1", 1).await;
    w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert!(w.sent_bodies()[0]["data"].get("profile").is_none());
    assert_eq!(w.users.journal.count("users.get"), 0, "no read");

    w.include_profile();
    let event = crate::contract::disabled_event(WS, "other", DisabledReason::Gone, T0);
    let own = Lane {
        user_id: ENDPOINT_LANE.into(),
        ..lane("")
    };
    w.deliveries.enqueue(&own, &event).await.unwrap();
    w.deliveries.drain(&own, NO_DEADLINE).await.unwrap();
    assert!(w.sent_bodies()[1]["data"].get("profile").is_none());
    assert_eq!(w.users.journal.count("users.get"), 0);
}

#[tokio::test]
async fn a_410_that_did_not_disable_the_endpoint_is_retried_on_the_schedule() {
    let w = world();
    w.webhooks.put_before_disabling.store(true, SeqCst);
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.wakes.take();
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!((drained.failed, drained.given_up), (1, 0));
    assert_eq!(w.stored().disabled, None, "re-pointed since: not disabled");
    assert_eq!(w.wakes.take(), [(lane("u1"), RETRY_WAITS[0])]);
    w.advance(RETRY_WAITS[0]);
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, 1, "the new URL takes it");
}

#[tokio::test]
async fn a_profile_that_cannot_be_read_puts_the_attempt_off_without_counting_it() {
    let w = world();
    w.store_user();
    w.include_profile();
    w.users
        .faults
        .fail("users.get", PortError::Unavailable("throttled".into()), 1);
    w.enqueue("u1", 1).await;
    w.wakes.take();
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.deferred, 1);
    assert!(w.sender.received().is_empty(), "nothing sent");
    assert_eq!(w.wakes.take(), [(lane("u1"), PROFILE_READ_RETRY)]);
    assert_eq!(w.lanes.state(&lane("u1")).attempts, 0, "not an attempt");
    assert_eq!(w.stored().failing_since, None, "nor the endpoint's failure");
    let drained = w.deliveries.drain(&lane("u1"), NO_DEADLINE).await.unwrap();
    assert_eq!(drained.delivered, 1);
}

fn disabled_endpoint(reason: DisabledReason) -> Endpoint {
    Endpoint {
        disabled: Some(Disabled {
            reason,
            at: T0,
            announced: true,
        }),
        ..endpoint()
    }
}

fn replay_of(since_ms: i64, until_ms: i64, only: Option<DeliveryStatus>) -> ReplayTask {
    ReplayTask {
        replay_id: "rpl_1".into(),
        workspace_id: WS.into(),
        webhook_id: WEBHOOK.into(),
        since_ms,
        until_ms,
        only,
        after: None,
    }
}

/// A line of the log as a worker writes it: message `n` of user `user` at `at`.
fn logged_line(n: usize, user: &str, at: i64, status: DeliveryStatus) -> LoggedAttempt {
    let data = json!({"external_user_id": user, "user_version": n});
    LoggedAttempt {
        at,
        message_id: format!("msg_ev{n}"),
        user_id: user.into(),
        sequence: n as u64,
        body: delivery_body(
            EventType::AudienceEntered,
            "2027-01-15T08:00:00.000Z",
            WEBHOOK,
            n as u64,
            &data,
        ),
        status,
        http_status: None,
        error: None,
        latency_ms: None,
        next_attempt_at: None,
    }
}

impl World {
    fn log_lines(&self, lines: impl IntoIterator<Item = LoggedAttempt>) {
        let mut log = self.webhooks.log.lock().unwrap();
        for line in lines {
            let place = log_place(line.at, &line.message_id);
            log.insert((WS.into(), WEBHOOK.into(), place), line);
        }
    }

    /// Runs a replay's pages until none is left; deliveries appended again, pages.
    async fn replay_all(&self, task: ReplayTask) -> (usize, usize) {
        let (mut resent, mut pages) = (0, 0);
        let mut next = Some(task);
        while let Some(task) = next {
            let replayed = self.deliveries.replay(&task).await.unwrap();
            resent += replayed.resent;
            pages += 1;
            next = self.wakes.replays.lock().unwrap().pop();
            assert_eq!(next.is_some(), replayed.more);
        }
        (resent, pages)
    }

    async fn drain_users(&self, users: &[&str]) {
        for user in users {
            self.deliveries
                .drain(&lane(user), NO_DEADLINE)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_replay_sends_each_delivery_again_under_its_id_with_the_endpoint_s_next_sequence() {
    let w = world();
    w.sender.answer([replied(410)]);
    w.enqueue("u1", 1).await;
    w.enqueue("u1", 2).await;
    w.drain_users(&["u1"]).await;
    // Disabled by the 410 (both given up), enabled again by a PUT.
    w.webhooks
        .endpoints
        .lock()
        .unwrap()
        .insert((WS.into(), WEBHOOK.into()), endpoint());
    w.enqueue("u2", 3).await;
    w.drain_users(&["u2"]).await;
    let first = w.sender.received();
    assert_eq!(w.attempted(), ["msg_ev1", "msg_ev3"]);

    w.advance(Duration::from_secs(1));
    let until = T0 + 1_000;
    let (resent, pages) = w.replay_all(replay_of(T0, until, None)).await;
    assert_eq!((resent, pages), (3, 1));
    w.drain_users(&["u1", "u2"]).await;
    let again = &w.sender.received()[first.len()..];
    let ids: Vec<_> = again
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        ids,
        ["msg_ev1", "msg_ev2", "msg_ev3"],
        "each once, a user's in order"
    );
    let sequences = &w.sequences()[first.len()..];
    assert!(
        sequences
            .iter()
            .all(|s| *s > w.sequences()[..first.len()].iter().copied().max().unwrap()),
        "{sequences:?}: the endpoint's next, not the old ones"
    );
    let body = |r: &Received| {
        let mut body: Value = serde_json::from_str(&r.body).unwrap();
        body["sequence"] = json!(0);
        body
    };
    assert_eq!(
        body(&again[0]),
        body(&first[0]),
        "the same body but its sequence"
    );

    // Only what was given up; the replay's own lines (after `until`) are not in it.
    let (resent, _) = w
        .replay_all(replay_of(T0, until, Some(DeliveryStatus::GivenUp)))
        .await;
    assert_eq!(resent, 2);
}

#[tokio::test]
async fn a_replay_reads_its_range_a_page_at_a_time_oldest_first_and_its_outcome_only() {
    let w = world();
    let status = |n: usize| match n % 3 {
        0 => DeliveryStatus::Delivered,
        1 => DeliveryStatus::GivenUp,
        _ => DeliveryStatus::Retrying,
    };
    let count = REPLAY_PAGE * 2 + 10;
    w.log_lines(
        (0..count).map(|n| logged_line(n, &format!("u{}", n % 7), T0 + n as i64, status(n))),
    );
    // The line of `until` itself, and one before `since`, are out of range.
    let (since, until) = (T0 + 1, T0 + count as i64 - 1);
    let (resent, pages) = w
        .replay_all(replay_of(since, until, Some(DeliveryStatus::GivenUp)))
        .await;
    let given_up: Vec<usize> = (1..count - 1).filter(|n| n % 3 == 1).collect();
    assert_eq!((resent, pages), (given_up.len(), 3));
    let appended: BTreeSet<String> = w
        .lanes
        .waiting()
        .into_iter()
        .map(|queued| queued.message_id)
        .collect();
    let expected: BTreeSet<String> = given_up.iter().map(|n| format!("msg_ev{n}")).collect();
    assert_eq!(appended, expected);

    let w = world();
    w.log_lines((0..count).map(|n| logged_line(n, "u1", T0 + n as i64, status(n))));
    let (resent, _) = w.replay_all(replay_of(T0, T0 + count as i64, None)).await;
    assert_eq!(
        resent,
        (0..count).filter(|n| n % 3 != 2).count(),
        "delivered and given up, never retrying"
    );
    w.drain_users(&["u1"]).await;
    let versions: Vec<u64> = w
        .sender
        .received()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body).unwrap()["data"]["user_version"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        versions.windows(2).all(|v| v[0] < v[1]),
        "{versions:?}: in the user's order"
    );
}

#[tokio::test]
async fn nothing_is_replayed_to_an_endpoint_disabled_or_deleted_since() {
    let w = world();
    w.log_lines([logged_line(1, "u1", T0, DeliveryStatus::Delivered)]);
    let endpoints = Arc::clone(&w.webhooks.endpoints);
    endpoints.lock().unwrap().insert(
        (WS.into(), WEBHOOK.into()),
        disabled_endpoint(DisabledReason::Gone),
    );
    let replayed = w
        .deliveries
        .replay(&replay_of(T0, T0 + 1, None))
        .await
        .unwrap();
    assert_eq!(replayed, Replayed::default());
    endpoints.lock().unwrap().clear();
    let replayed = w
        .deliveries
        .replay(&replay_of(T0, T0 + 1, None))
        .await
        .unwrap();
    assert_eq!(replayed, Replayed::default());
    let made_again = Endpoint {
        created_at: T0 + 1,
        ..endpoint()
    };
    endpoints
        .lock()
        .unwrap()
        .insert((WS.into(), WEBHOOK.into()), made_again);
    let replayed = w
        .deliveries
        .replay(&replay_of(T0, T0 + 1, None))
        .await
        .unwrap();
    assert_eq!(
        replayed,
        Replayed::default(),
        "another endpoint under the same id"
    );
    assert!(w.lanes.waiting().is_empty() && w.wakes.replays.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_replay_page_that_cannot_schedule_the_next_fails_whole_and_comes_again() {
    let w = world();
    w.log_lines(
        (0..REPLAY_PAGE + 1)
            .map(|n| logged_line(n, "u1", T0 + n as i64, DeliveryStatus::Delivered)),
    );
    w.wakes.faults.fail("wakes.replay", unavailable(), 1);
    let task = replay_of(T0, T0 + 1_000, None);
    assert!(w.deliveries.replay(&task).await.is_err());
    assert_eq!(
        w.lanes.waiting().len(),
        REPLAY_PAGE,
        "the failed page appended its lines"
    );
    let (resent, pages) = w.replay_all(task).await;
    assert_eq!((resent, pages), (REPLAY_PAGE + 1, 2));
    assert_eq!(
        w.lanes.waiting().len(),
        2 * REPLAY_PAGE + 1,
        "the page again: its lines twice, under their ids"
    );
}

#[tokio::test]
async fn an_event_a_disabled_endpoint_missed_is_logged_so_a_replay_after_a_put_sends_it() {
    let w = world();
    let endpoints = Arc::clone(&w.webhooks.endpoints);
    endpoints.lock().unwrap().insert(
        (WS.into(), WEBHOOK.into()),
        disabled_endpoint(DisabledReason::Failing),
    );
    assert_eq!(w.deliveries.fan_out(&message(5)).await.unwrap(), 0);
    assert!(w.lanes.waiting().is_empty(), "nothing queued for it");
    let missed: Vec<_> = w
        .logged()
        .into_iter()
        .map(|l| (l.message_id, l.user_id, l.status, l.error))
        .collect();
    assert_eq!(
        missed,
        [(
            "msg_ev5".to_owned(),
            "u1".to_owned(),
            DeliveryStatus::GivenUp,
            Some("disabled".to_owned())
        )]
    );

    endpoints
        .lock()
        .unwrap()
        .insert((WS.into(), WEBHOOK.into()), endpoint());
    w.advance(Duration::from_secs(1));
    let (resent, _) = w
        .replay_all(replay_of(T0, T0 + 1_000, Some(DeliveryStatus::GivenUp)))
        .await;
    assert_eq!(resent, 1);
    // Within the endpoints kept, the fan-out still sees it disabled: read again, it is
    // enabled and the event is queued, not missed.
    assert_eq!(w.deliveries.fan_out(&message(6)).await.unwrap(), 1);
    w.drain_users(&["u1"]).await;
    assert_eq!(w.attempted(), ["msg_ev5", "msg_ev6"]);
    assert_eq!(
        w.logged()
            .iter()
            .filter(|l| l.error.as_deref() == Some("disabled"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_worker_that_sees_another_move_its_lane_leaves_a_wake_in_case_that_one_dies() {
    // SQS gives one wake to two workers; the first to succeed deletes it for both. B
    // dies part way (after `polls` turns); A, if it saw B move the lane, leaves it to B
    // with a wake after the lease: the lane never waits for its user's next event.
    let mut watched = 0;
    for seed in 0..60 {
        let w = world_at(T0, Interleaving::seeded(seed), DELIVERIES_PER_WAKE);
        for n in 1..=3 {
            w.enqueue("u1", n).await;
        }
        w.wakes.take();
        w.sender.answer((0..12).map(|_| replied(200)));
        let one = lane("u1");
        let dies_after = seed as usize % 12;
        let a = w.deliveries.drain(&one, NO_DEADLINE);
        let b = async {
            let drain = w.deliveries.drain(&one, NO_DEADLINE);
            futures::pin_mut!(drain);
            let dies = async {
                for _ in 0..dies_after {
                    tokio::task::yield_now().await;
                }
            };
            futures::pin_mut!(dies);
            futures::future::select(drain, dies).await;
        };
        let (a, ()) = futures::join!(a, b);
        assert!(a.is_ok(), "seed {seed}");
        let wakes = w.wakes.take();
        watched += usize::from(wakes.contains(&(lane("u1"), LANE_LEASE)));
        // The wakes left (the watch among them) come, a lease later.
        w.advance(LANE_LEASE);
        for (lane, _) in wakes {
            w.deliveries.drain(&lane, NO_DEADLINE).await.unwrap();
        }
        let state = w.lanes.state(&lane("u1"));
        assert_eq!(
            state.done, state.tail,
            "seed {seed}: left with work and no wake"
        );
        let mut seen = HashSet::new();
        let first: Vec<String> = w
            .attempted()
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        assert_eq!(
            first,
            ids(1..=3),
            "seed {seed}: first receipts in the lane's order"
        );
    }
    assert!(
        watched > 0,
        "some interleaving has one worker see the other move the lane"
    );
}
