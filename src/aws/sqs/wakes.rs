//! The wake queue's side of the SQS adapter: a wake names one (endpoint, user) lane;
//! its delay is a retry's wait, its message group the endpoint.

use super::{sqs_safe, SqsQueue};
use crate::app::ports::{Lane, PortError, Wakes};

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

/// The lane a wake's body names, or `None` if it names none.
pub fn decode_wake(body: &str) -> Option<Lane> {
    let wake: WakeBody = serde_json::from_str(body).ok()?;
    Some(Lane {
        workspace_id: wake.workspace_id.into_owned(),
        webhook_id: wake.webhook_id.into_owned(),
        user_id: wake.external_user_id.into_owned(),
    })
}

/// Whole seconds SQS delays a wake due `after` from now: rounded up (a wake early by
/// less than a second would only set its timer again), at most [`MAX_DELAY`].
fn delay_seconds(after: std::time::Duration) -> i32 {
    let seconds = after.min(MAX_DELAY).as_millis().div_ceil(1000);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// A lane's message group: its endpoint, as 16 hex digits of a hash of the workspace
/// and webhook ids (together up to 129 characters, past SQS's 128 for a group id).
fn endpoint_group(lane: &Lane) -> String {
    let endpoint = lane
        .workspace_id
        .bytes()
        .chain([b'#'])
        .chain(lane.webhook_id.bytes());
    format!("{:016x}", crate::aws::stable_hash(endpoint))
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
        let body = serde_json::to_string(&body)
            .map(sqs_safe)
            .map_err(|_| PortError::Refused("wake not encoded".into()))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .message_group_id(endpoint_group(lane))
            .delay_seconds(delay_seconds(after))
            .send()
            .await?;
        Ok(())
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
    fn a_wake_names_its_lane_and_nothing_else_reads_as_one() {
        let lane = decode_wake(r#"{"workspace_id":"w","webhook_id":"h","external_user_id":"u"}"#);
        assert_eq!(
            lane,
            Some(Lane {
                workspace_id: "w".into(),
                webhook_id: "h".into(),
                user_id: "u".into()
            })
        );
        assert_eq!(
            decode_wake(r#"{"workspace_id":"w","external_user_id":"u"}"#),
            None
        );
        assert_eq!(decode_wake(r#"{"shard":1,"until_ms":2}"#), None);
    }

    #[test]
    fn an_endpoint_s_group_is_short_whatever_its_ids_and_apart_from_others() {
        let lane = |workspace: &str, webhook: &str| Lane {
            workspace_id: workspace.into(),
            webhook_id: webhook.into(),
            user_id: "u".into(),
        };
        let longest = endpoint_group(&lane(&"w".repeat(64), &"h".repeat(64)));
        assert_eq!(longest.len(), 16);
        assert_eq!(
            endpoint_group(&lane("ws1", "crm")),
            endpoint_group(&lane("ws1", "crm"))
        );
        assert_ne!(
            endpoint_group(&lane("ws1", "crm")),
            endpoint_group(&lane("ws2", "crm"))
        );
        assert_ne!(
            endpoint_group(&lane("ws1", "crm")),
            endpoint_group(&lane("ws1#c", "rm"))
        );
    }
}
