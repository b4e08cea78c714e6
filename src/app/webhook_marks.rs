//! Marks the bus events of workspaces with webhooks (`"webhooks": true` in the
//! detail), so that the `WebhookEvents` rule sends only those to delivery: most
//! workspaces have no endpoint, and their events then cost no intake message, no
//! invocation and no endpoint read (`docs/webhooks.md` §5). Both producers' buses (the
//! changes and the audiences functions') are wrapped in it.

use super::deliveries::Clock;
use super::ports::{EventBus, PortError, WebhookWorkspaces};
use crate::domain::change::ChangeEvent;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The detail field the rule matches.
pub const WEBHOOKS_MARK: &str = "webhooks";
/// What the mark adds to an event's size: `,"webhooks":true`.
const MARK_BYTES: usize = 16;
/// How long an instance keeps the workspaces with webhooks: a workspace's first
/// endpoint gets its events within this.
pub const WORKSPACES_KEPT_FOR: Duration = Duration::from_secs(5);

/// The workspaces as read (ms); `None`: the read failed, so every event is marked (a
/// delivery is never lost to a failed read, at the cost of intake messages).
type Kept = (i64, Option<Arc<HashSet<String>>>);

pub struct WebhookMarks<B, H> {
    bus: B,
    workspaces: H,
    clock: Clock,
    kept: Mutex<Option<Kept>>,
}

impl<B, H: WebhookWorkspaces> WebhookMarks<B, H> {
    pub fn new(bus: B, workspaces: H, clock: Clock) -> Self {
        Self {
            bus,
            workspaces,
            clock,
            kept: Mutex::default(),
        }
    }

    /// The workspaces with webhooks, read at most every [`WORKSPACES_KEPT_FOR`].
    async fn with_webhooks(&self) -> Option<Arc<HashSet<String>>> {
        let now = (self.clock)();
        let kept = self.kept_now().clone();
        if let Some((read_at, workspaces)) = kept {
            if now - read_at < WORKSPACES_KEPT_FOR.as_millis() as i64 {
                return workspaces;
            }
        }
        let read = self.workspaces.with_webhooks().await.ok().map(Arc::new);
        *self.kept_now() = Some((now, read.clone()));
        read
    }

    fn kept_now(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `event` is of a workspace in `workspaces` (all, when they are not known).
fn marked(event: &ChangeEvent, workspaces: Option<&HashSet<String>>) -> bool {
    let workspace = event.detail.get("workspace_id").and_then(Value::as_str);
    match (workspaces, workspace) {
        (Some(workspaces), Some(workspace)) => workspaces.contains(workspace),
        _ => true,
    }
}

impl<B: EventBus + Sync, H: WebhookWorkspaces + Sync> EventBus for WebhookMarks<B, H> {
    const MAX_ENTRIES_PER_CALL: usize = B::MAX_ENTRIES_PER_CALL;
    const MAX_BYTES_PER_CALL: usize = B::MAX_BYTES_PER_CALL;

    fn entry_size(event: &ChangeEvent) -> usize {
        B::entry_size(event) + MARK_BYTES
    }

    async fn put(&self, events: &[&ChangeEvent]) -> Result<Vec<usize>, PortError> {
        let workspaces = self.with_webhooks().await;
        let copies: Vec<Option<ChangeEvent>> = events
            .iter()
            .map(|event| {
                marked(event, workspaces.as_deref()).then(|| {
                    let mut copy = (*event).clone();
                    if let Some(detail) = copy.detail.as_object_mut() {
                        detail.insert(WEBHOOKS_MARK.into(), Value::Bool(true));
                    }
                    copy
                })
            })
            .collect();
        let sent: Vec<&ChangeEvent> = events
            .iter()
            .zip(&copies)
            .map(|(event, copy)| copy.as_ref().unwrap_or(event))
            .collect();
        self.bus.put(&sent).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{MemoryBus, MemoryWebhooks};
    use crate::app::ports::Webhooks;
    use serde_json::json;
    use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

    const T0: i64 = 1_800_000_000_000;

    fn event(workspace: &str) -> ChangeEvent {
        ChangeEvent {
            source: "vibefollow.users",
            detail_type: "User Changed",
            detail: json!({"workspace_id": workspace, "external_user_id": "u1"}),
        }
    }

    fn marks(
        workspaces: &MemoryWebhooks,
    ) -> (
        WebhookMarks<MemoryBus, MemoryWebhooks>,
        MemoryBus,
        Arc<AtomicI64>,
    ) {
        let bus = MemoryBus::default();
        let now = Arc::new(AtomicI64::new(T0));
        let clock = Arc::clone(&now);
        let marks = WebhookMarks::new(
            bus.clone(),
            workspaces.clone(),
            Arc::new(move || clock.load(SeqCst)),
        );
        (marks, bus, now)
    }

    /// The mark of each event of the bus's last call.
    fn last_marks(bus: &MemoryBus) -> Vec<bool> {
        let calls = bus.calls.lock().unwrap();
        calls
            .last()
            .unwrap()
            .iter()
            .map(|e| e.detail.get(WEBHOOKS_MARK) == Some(&Value::Bool(true)))
            .collect()
    }

    #[tokio::test]
    async fn only_events_of_workspaces_with_webhooks_are_marked() {
        let workspaces = MemoryWebhooks::default();
        workspaces.listed.lock().unwrap().insert("ws1".into());
        let (marks, bus, _) = marks(&workspaces);
        let (a, b) = (event("ws1"), event("ws2"));
        assert_eq!(marks.put(&[&a, &b]).await, Ok(vec![]));
        assert_eq!(last_marks(&bus), [true, false]);
        assert_eq!(
            WebhookMarks::<MemoryBus, MemoryWebhooks>::entry_size(&a),
            MemoryBus::entry_size(&a) + MARK_BYTES
        );
        let marked = &bus.calls.lock().unwrap()[0][0];
        assert_eq!(
            marked.detail.to_string().len(),
            a.detail.to_string().len() + MARK_BYTES,
            "the mark's size as counted"
        );
    }

    #[tokio::test]
    async fn the_workspaces_are_read_once_in_a_while_and_a_new_one_is_seen_after() {
        let workspaces = MemoryWebhooks::default();
        let (marks, bus, now) = marks(&workspaces);
        marks.put(&[&event("ws1")]).await.unwrap();
        workspaces.listed.lock().unwrap().insert("ws1".into());
        marks.put(&[&event("ws1")]).await.unwrap();
        assert_eq!(last_marks(&bus), [false], "kept a while");
        now.fetch_add(WORKSPACES_KEPT_FOR.as_millis() as i64, SeqCst);
        marks.put(&[&event("ws1")]).await.unwrap();
        assert_eq!(last_marks(&bus), [true]);
        assert_eq!(workspaces.journal.count("webhooks.with_webhooks"), 2);
    }

    #[tokio::test]
    async fn a_failed_read_marks_every_event_so_none_is_lost() {
        let workspaces = MemoryWebhooks::default();
        workspaces.faults.fail(
            "webhooks.with_webhooks",
            PortError::Unavailable("throttled".into()),
            1,
        );
        let (marks, bus, _) = marks(&workspaces);
        marks.put(&[&event("ws1"), &event("ws2")]).await.unwrap();
        assert_eq!(last_marks(&bus), [true, true]);
    }

    #[tokio::test]
    async fn an_endpoint_created_lists_its_workspace() {
        let webhooks = MemoryWebhooks::default();
        let endpoint = crate::app::ports::Endpoint {
            webhook_id: "crm".into(),
            url: "https://hooks.example.com/".into(),
            events: [crate::domain::webhook::EventType::UserChanged].into(),
            audiences: None,
            include_profile: false,
            secret: crate::domain::webhook::Secret("whsec_x".into()),
            previous_secret: None,
            created_at: T0,
            updated_at: T0,
            failing_since: None,
            disabled: None,
        };
        webhooks.put("ws1", &endpoint, 20).await.unwrap();
        assert_eq!(
            webhooks.with_webhooks().await.unwrap(),
            HashSet::from(["ws1".to_owned()])
        );
    }
}
