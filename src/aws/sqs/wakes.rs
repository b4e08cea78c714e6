//! The wake queue's side of the SQS adapter: a wake names one (endpoint, user) lane;
//! its delay is a retry's wait, its message group the endpoint. A replay's next page
//! waits in the same queue, in its endpoint's group.

use super::{sqs_safe, SqsQueue};
use crate::app::ports::{DeliveryStatus, Lane, PortError, ReplayTask, ReplayTasks, Wakes};

/// The longest delay SQS gives a message. A lane's longer wait (30 min to 10 h) is a
/// chain of wakes: each one early finds its lane not yet due and sets the rest
/// (`Deliveries::drain`), so no other scheduler is needed (`docs/webhooks.md` §1).
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(900);

/// A wake as an SQS body: the lane it starts.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WakeBody<'a> {
    workspace_id: std::borrow::Cow<'a, str>,
    webhook_id: std::borrow::Cow<'a, str>,
    external_user_id: std::borrow::Cow<'a, str>,
}

/// A replay's page as an SQS body.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    replay_id: String,
    workspace_id: String,
    webhook_id: String,
    since_ms: i64,
    until_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    only: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

/// What a message of the wake queue asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeMessage {
    Lane(Lane),
    Replay(ReplayTask),
}

/// What a wake queue's body asks, or `None` if it is neither a wake nor a replay.
pub fn decode_wake(body: &str) -> Option<WakeMessage> {
    if let Ok(wake) = serde_json::from_str::<WakeBody>(body) {
        return Some(WakeMessage::Lane(Lane {
            workspace_id: wake.workspace_id.into_owned(),
            webhook_id: wake.webhook_id.into_owned(),
            user_id: wake.external_user_id.into_owned(),
        }));
    }
    let replay: ReplayBody = serde_json::from_str(body).ok()?;
    let only = match replay.only.as_deref().map(DeliveryStatus::parse) {
        None => None,
        Some(Some(DeliveryStatus::Retrying) | None) => return None,
        Some(status) => status,
    };
    Some(WakeMessage::Replay(ReplayTask {
        replay_id: replay.replay_id,
        workspace_id: replay.workspace_id,
        webhook_id: replay.webhook_id,
        since_ms: replay.since_ms,
        until_ms: replay.until_ms,
        only,
        after: replay.after,
    }))
}

/// Whole seconds SQS delays a wake due `after` from now: rounded up (a wake early by
/// less than a second would only set its timer again), at most [`MAX_DELAY`].
fn delay_seconds(after: std::time::Duration) -> i32 {
    let seconds = after.min(MAX_DELAY).as_millis().div_ceil(1000);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// An endpoint's message group: 16 hex digits of a hash of the workspace and webhook
/// ids (together up to 129 characters, past SQS's 128 for a group id).
fn endpoint_group(workspace_id: &str, webhook_id: &str) -> String {
    let endpoint = workspace_id.bytes().chain([b'#']).chain(webhook_id.bytes());
    format!("{:016x}", crate::aws::stable_hash(endpoint))
}

impl SqsQueue {
    async fn send_to_endpoint_group(
        &self,
        body: Result<String, serde_json::Error>,
        group: String,
        delay_seconds: i32,
    ) -> Result<(), PortError> {
        let body = body
            .map(sqs_safe)
            .map_err(|_| PortError::Refused("wake not encoded".into()))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .message_group_id(group)
            .delay_seconds(delay_seconds)
            .send()
            .await?;
        Ok(())
    }
}

impl Wakes for SqsQueue {
    /// The wake queue is a fair queue: its message group is the endpoint, so a
    /// backed-up endpoint's wakes are served after quiet ones'.
    async fn wake(&self, lane: &Lane, after: std::time::Duration) -> Result<(), PortError> {
        let body = WakeBody {
            workspace_id: lane.workspace_id.as_str().into(),
            webhook_id: lane.webhook_id.as_str().into(),
            external_user_id: lane.user_id.as_str().into(),
        };
        let group = endpoint_group(&lane.workspace_id, &lane.webhook_id);
        self.send_to_endpoint_group(serde_json::to_string(&body), group, delay_seconds(after))
            .await
    }
}

fn encode_replay(task: &ReplayTask) -> Result<String, serde_json::Error> {
    serde_json::to_string(&ReplayBody {
        replay_id: task.replay_id.clone(),
        workspace_id: task.workspace_id.clone(),
        webhook_id: task.webhook_id.clone(),
        since_ms: task.since_ms,
        until_ms: task.until_ms,
        only: task.only.map(|status| status.as_str().to_owned()),
        after: task.after.clone(),
    })
}

/// How long a replay's first page waits: a log line is written when its attempt ends
/// (up to 15 s after the start that places it), so an attempt in flight at the
/// request has its line written by then.
const REPLAY_START_DELAY_SECS: i32 = 20;

impl ReplayTasks for SqsQueue {
    async fn schedule(&self, task: &ReplayTask) -> Result<(), PortError> {
        let group = endpoint_group(&task.workspace_id, &task.webhook_id);
        let delay = if task.after.is_none() {
            REPLAY_START_DELAY_SECS
        } else {
            0
        };
        self.send_to_endpoint_group(encode_replay(task), group, delay)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_waits_whole_seconds_rounded_up_and_at_most_sqs_s_longest_delay() {
        use std::time::Duration;
        assert_eq!(delay_seconds(Duration::ZERO), 0);
        assert_eq!(delay_seconds(Duration::from_millis(1)), 1);
        assert_eq!(delay_seconds(Duration::from_millis(5_000)), 5);
        assert_eq!(delay_seconds(Duration::from_millis(5_001)), 6);
        assert_eq!(delay_seconds(Duration::from_secs(900)), 900);
        assert_eq!(delay_seconds(Duration::from_secs(10 * 3600)), 900);
    }

    #[test]
    fn a_wake_names_its_lane_a_replay_its_page_and_nothing_else_reads_as_either() {
        let lane = decode_wake(r#"{"workspace_id":"w","webhook_id":"h","external_user_id":"u"}"#);
        assert_eq!(
            lane,
            Some(WakeMessage::Lane(Lane {
                workspace_id: "w".into(),
                webhook_id: "h".into(),
                user_id: "u".into()
            }))
        );
        let mut task = ReplayTask {
            replay_id: "rpl_1".into(),
            workspace_id: "w".into(),
            webhook_id: "h".into(),
            since_ms: 1,
            until_ms: 2,
            only: None,
            after: None,
        };
        for _ in 0..2 {
            let body = encode_replay(&task).unwrap();
            assert_eq!(decode_wake(&body), Some(WakeMessage::Replay(task.clone())));
            task.only = Some(DeliveryStatus::GivenUp);
            task.after = Some("0000000000001#msg_a".into());
        }
        for neither in [
            r#"{"workspace_id":"w","external_user_id":"u"}"#,
            r#"{"shard":1,"until_ms":2}"#,
            r#"{"replay_id":"r","workspace_id":"w","webhook_id":"h","since_ms":1,"until_ms":2,"only":"late"}"#,
            r#"{"replay_id":"r","workspace_id":"w","webhook_id":"h","since_ms":1,"until_ms":2,"only":"retrying"}"#,
        ] {
            assert_eq!(decode_wake(neither), None, "{neither}");
        }
    }

    #[test]
    fn an_endpoint_s_group_is_short_whatever_its_ids_and_apart_from_others() {
        let longest = endpoint_group(&"w".repeat(64), &"h".repeat(64));
        assert_eq!(longest.len(), 16);
        assert_eq!(endpoint_group("ws1", "crm"), endpoint_group("ws1", "crm"));
        assert_ne!(endpoint_group("ws1", "crm"), endpoint_group("ws2", "crm"));
        assert_ne!(endpoint_group("ws1", "crm"), endpoint_group("ws1#c", "rm"));
    }
}
