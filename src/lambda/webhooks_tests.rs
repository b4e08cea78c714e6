//! The webhooks edge fed the sample events of `events/` as Lambda delivers them, over
//! the in-memory ports: which use case each queue's messages reach, what is reported
//! failed, and that a user's events keep their order.

use super::*;
use crate::app::fakes::*;
use crate::app::ports::{DeliveryLog, DeliveryStatus, Endpoint, LoggedAttempt, PortError};
use crate::domain::webhook::{EventType, Secret};
use crate::lambda::samples::{resources, sample};
use std::collections::BTreeSet;

const T0: i64 = 1_800_000_000_000;

type Function =
    WebhooksFunction<MemoryWebhooks, MemoryLanes, MemoryWakes, ScriptedSender, MemoryUsers>;

struct Edge {
    function: Function,
    webhooks: MemoryWebhooks,
    lanes: MemoryLanes,
    wakes: MemoryWakes,
    sender: ScriptedSender,
}

/// The edge with one endpoint, `crm` of workspace `dev`, taking audience entries and
/// user changes.
fn edge() -> Edge {
    let webhooks = MemoryWebhooks::default();
    let endpoint = Endpoint {
        webhook_id: "crm".into(),
        url: "https://hooks.example.com/vf".into(),
        events: BTreeSet::from([EventType::AudienceEntered, EventType::UserChanged]),
        audiences: None,
        include_profile: false,
        secret: Secret("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
        previous_secret: None,
        created_at: T0,
        updated_at: T0,
        failing_since: None,
        disabled: None,
    };
    webhooks
        .endpoints
        .lock()
        .unwrap()
        .insert(("dev".into(), "crm".into()), endpoint);
    let (lanes, wakes, sender) = (
        MemoryLanes::default(),
        MemoryWakes::default(),
        ScriptedSender::default(),
    );
    let deliveries = Deliveries::new(
        webhooks.clone(),
        lanes.clone(),
        wakes.clone(),
        sender.clone(),
        MemoryUsers::default(),
        Arc::new(|| T0),
        Arc::new(|| 1.0),
    );
    Edge {
        function: WebhooksFunction::new(deliveries, &resources()),
        webhooks,
        lanes,
        wakes,
        sender,
    }
}

fn lane(user: &str) -> Lane {
    Lane {
        workspace_id: "dev".into(),
        webhook_id: "crm".into(),
        user_id: user.into(),
    }
}

impl Edge {
    /// Handles `events/<sample>` with time to spare: the messages reported failed.
    async fn failed(&self, sample_name: &str) -> Vec<String> {
        let response = self.function.handle(sample(sample_name), i64::MAX).await;
        response
            .batch_item_failures
            .into_iter()
            .map(|failure| failure.item_identifier)
            .collect()
    }
}

/// The `webhook-id`s queued in a lane, in lane order.
fn queued(edge: &Edge, user: &str) -> Vec<String> {
    let state = edge.lanes.state(&lane(user));
    state
        .queued
        .values()
        .map(|q| q.message_id.clone())
        .collect()
}

#[tokio::test]
async fn bus_events_reach_their_lanes_in_order_and_an_unreadable_one_comes_back() {
    let edge = edge();
    let failed = edge.failed("sqs-webhook-intake.json").await;
    assert_eq!(failed, ["7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0004"]);
    assert_eq!(queued(&edge, "usr_42"), ["msg_mv_01", "msg_ch_01"]);
    assert_eq!(queued(&edge, "usr_7"), ["msg_mv_02"]);
    let woken: BTreeSet<Lane> = edge.wakes.take().into_iter().map(|(l, _)| l).collect();
    assert_eq!(woken, BTreeSet::from([lane("usr_42"), lane("usr_7")]));
}

#[tokio::test]
async fn a_user_s_later_events_come_back_with_the_one_that_failed_so_none_overtakes_it() {
    let edge = edge();
    edge.lanes.faults.fail(
        "lanes.append",
        PortError::Unavailable("throttled".into()),
        1,
    );
    let failed = edge.failed("sqs-webhook-intake.json").await;
    // usr_42's two events, or usr_7's one, met the failure (users go side by side).
    assert!(
        failed
            == [
                "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0004",
                "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0001",
                "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0002"
            ]
            || failed
                == [
                    "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0004",
                    "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fi0003"
                ],
        "{failed:?}"
    );
    if failed.len() == 3 {
        assert!(queued(&edge, "usr_42").is_empty(), "nothing overtook");
    }
}

#[tokio::test]
async fn wakes_drain_each_lane_once_and_an_unreadable_one_comes_back() {
    let edge = edge();
    edge.failed("sqs-webhook-intake.json").await;
    edge.wakes.take();
    let failed = edge.failed("sqs-webhook-wakes.json").await;
    assert_eq!(failed, ["7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fw0004"]);
    let mut sent: Vec<String> = edge
        .sender
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect();
    sent.sort();
    // usr_42's lane, woken twice, sent each of its two deliveries once.
    assert_eq!(sent, ["msg_ch_01", "msg_mv_01", "msg_mv_02"]);
    assert_eq!(edge.lanes.state(&lane("usr_42")).done, 2);
}

#[tokio::test]
async fn a_lane_that_could_not_be_read_has_all_its_wakes_come_back() {
    let edge = edge();
    edge.failed("sqs-webhook-intake.json").await;
    edge.lanes
        .faults
        .fail("lanes.head", PortError::Unavailable("throttled".into()), 2);
    let mut failed = edge.failed("sqs-webhook-wakes.json").await;
    failed.sort_unstable();
    assert_eq!(
        failed,
        [
            "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fw0001",
            "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fw0002",
            "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fw0003",
            "7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fw0004",
        ]
    );
    assert!(edge.sender.received().is_empty());
}

#[tokio::test]
async fn a_replay_page_in_the_wake_queue_appends_its_lines_again_and_an_unreadable_one_comes_back()
{
    let edge = edge();
    let line = |n: i64, status| LoggedAttempt {
        at: T0 + n,
        message_id: format!("msg_mv_0{n}"),
        user_id: "usr_42".into(),
        sequence: n as u64,
        body: format!(
            r#"{{"type":"audience.entered","sequence":{n},"data":{{"user_version":{n}}}}}"#
        ),
        status,
        http_status: None,
        error: Some("disabled".into()),
        latency_ms: None,
        next_attempt_at: None,
    };
    for (n, status) in [(1, DeliveryStatus::GivenUp), (2, DeliveryStatus::Delivered)] {
        edge.webhooks
            .record("dev", "crm", &line(n, status))
            .await
            .unwrap();
    }
    let failed = edge.failed("sqs-webhook-replay.json").await;
    assert_eq!(failed, ["7a2d3b9f-8c2e-4d1f-ab66-3e0a8b2fr0002"]);
    assert_eq!(
        queued(&edge, "usr_42"),
        ["msg_mv_01"],
        "what was given up only"
    );
}
