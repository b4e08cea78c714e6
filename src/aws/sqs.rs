//! SQS adapter: accepted writes go to the upsert queue. It owns SQS's rules: which
//! characters a body may hold, how many messages one body and one call carry.

use crate::app::call_groups;
use crate::app::ports::{
    BuildQueue, BuildTask, ParkedUsers, PortError, TimeTask, TimeTasks, Unsent, UpsertQueue,
    UserKey,
};
use crate::domain::{UpsertMessage, MESSAGE_VERSION};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use futures::future::join_all;

/// SendMessageBatch's limits: entries per call, and bytes of all bodies together.
const MAX_ENTRIES_PER_CALL: usize = 10;
const MAX_BYTES_PER_CALL: usize = 256 * 1024;
/// Entries SQS refused within a successful call are sent again this many times (the
/// SDK already retries a call that failed as a whole).
const ENTRY_RETRIES: usize = 2;

/// A packed SQS body stays within one 64 KiB billing chunk of SQS (one message alone
/// may be bigger: a 32 KiB upsert always travels)...
const MAX_PACKED_BYTES: usize = 64 * 1024;
/// ...and holds few enough upserts that a consumer batch of 10 bodies stays small:
/// the consumer holds the profiles of a batch's users in memory.
const MAX_PACKED_MESSAGES: usize = 50;

/// A body the consumer cannot read: it is reported failed and reaches the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("body is not a valid upsert message ({})", crate::telemetry::json_fault(.0))]
    Malformed(#[from] serde_json::Error),
    #[error("message version {0} is not supported (expected 1 to {MESSAGE_VERSION})")]
    UnsupportedVersion(u32),
    #[error("a packed body holds no upsert")]
    Empty,
}

/// A message as an SQS body.
pub fn encode(message: &UpsertMessage) -> String {
    sqs_safe(serde_json::to_string(message).expect("an upsert message always serialises"))
}

/// The messages of one SQS body: one message, or a JSON array of them (a batch's
/// upserts packed by [`pack`]).
pub fn decode(body: &str) -> Result<Vec<UpsertMessage>, MessageError> {
    let messages: Vec<UpsertMessage> = if body.trim_start().starts_with('[') {
        serde_json::from_str(body)?
    } else {
        vec![serde_json::from_str(body)?]
    };
    if messages.is_empty() {
        return Err(MessageError::Empty);
    }
    if let Some(other) = messages
        .iter()
        .find(|m| !(1..=MESSAGE_VERSION).contains(&m.version))
    {
        return Err(MessageError::UnsupportedVersion(other.version));
    }
    Ok(messages)
}

/// SQS refuses a body holding U+FFFE or U+FFFF, which JSON allows and serde_json
/// writes as they are: written as escapes they mean the same and SQS takes them. (Every
/// other character SQS refuses, a control character or a lone surrogate, is escaped by
/// serde_json or cannot be in a Rust string.)
fn sqs_safe(json: String) -> String {
    if !json.contains(['\u{fffe}', '\u{ffff}']) {
        return json;
    }
    json.replace('\u{fffe}', "\\ufffe")
        .replace('\u{ffff}', "\\uffff")
}

/// One SQS body holding `messages` (indices into what was packed), in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub messages: std::ops::Range<usize>,
    pub body: String,
}

/// Packs messages, in order, into as few SQS bodies as the limits above allow. A body
/// of one message is the message itself, so a batch of one travels as a single upsert.
pub fn pack(messages: &[UpsertMessage]) -> Vec<Packed> {
    let mut packed: Vec<Packed> = Vec::new();
    let mut start = 0;
    let mut body = String::new();
    for (index, message) in messages.iter().enumerate() {
        let json = encode(message);
        let count = index - start;
        // `[`, a comma per message, `]`.
        let fits = count < MAX_PACKED_MESSAGES && body.len() + json.len() + 2 <= MAX_PACKED_BYTES;
        if count > 0 && !fits {
            packed.push(close(start..index, std::mem::take(&mut body)));
            start = index;
        }
        body.push(if index == start { '[' } else { ',' });
        body.push_str(&json);
    }
    if start < messages.len() {
        packed.push(close(start..messages.len(), body));
    }
    packed
}

fn close(messages: std::ops::Range<usize>, mut body: String) -> Packed {
    if messages.len() == 1 {
        body.remove(0);
    } else {
        body.push(']');
    }
    Packed { messages, body }
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Opens the connection to SQS (and resolves credentials and endpoint) with a read
    /// of the queue's ARN, so that the first upsert of the instance does not.
    pub async fn open_connection(&self) -> Result<(), PortError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await?;
        Ok(())
    }

    /// Sends many bodies in as few SendMessageBatch calls as SQS allows, all calls at
    /// once; returns the bodies SQS did not store.
    async fn send_bodies(&self, bodies: &[&str]) -> (Vec<usize>, Option<PortError>) {
        let sizes = bodies.iter().map(|body| body.len());
        let calls = call_groups(sizes, MAX_ENTRIES_PER_CALL, MAX_BYTES_PER_CALL)
            .into_iter()
            .map(|group| self.send_group(bodies, group));
        let mut unsent = Vec::new();
        let mut first_error = None;
        for (failed, error) in join_all(calls).await {
            unsent.extend(failed);
            first_error = first_error.or(error);
        }
        unsent.sort_unstable();
        (unsent, first_error)
    }

    /// Sends every body, or fails (bodies already sent stay sent).
    async fn send_all_bodies(&self, bodies: &[String]) -> Result<(), PortError> {
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        match self.send_bodies(&bodies).await {
            (unsent, _) if unsent.is_empty() => Ok(()),
            (_, error) => Err(error.unwrap_or_else(|| PortError::Unavailable("not sent".into()))),
        }
    }

    /// One call, then again for the entries SQS refused within it.
    async fn send_group(
        &self,
        bodies: &[&str],
        mut pending: Vec<usize>,
    ) -> (Vec<usize>, Option<PortError>) {
        let mut error = None;
        for _ in 0..=ENTRY_RETRIES {
            let entries = pending.iter().map(|&index| {
                SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(bodies[index])
                    .build()
            });
            let entries = match entries.collect::<Result<Vec<_>, _>>() {
                Ok(entries) => entries,
                Err(_) => return (pending, Some(PortError::Refused("entry not built".into()))),
            };
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let refused: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                    if let Some(first) = out.failed().first() {
                        // The entry's code only: its message may quote the body.
                        let code = first.code().to_owned();
                        error = Some(if first.sender_fault() {
                            PortError::Refused(code)
                        } else {
                            PortError::Unavailable(code)
                        });
                    }
                    pending.retain(|index| refused.contains(&index.to_string().as_str()));
                }
                // The SDK retried it already; the whole group is unsent.
                Err(err) => return (pending, Some(err.into())),
            }
            if pending.is_empty() {
                return (pending, None);
            }
        }
        (pending, error)
    }
}

impl UpsertQueue for SqsQueue {
    async fn send(&self, message: &UpsertMessage) -> Result<(), PortError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(encode(message))
            .send()
            .await?;
        Ok(())
    }

    async fn send_all(&self, messages: &[UpsertMessage]) -> Unsent {
        let packed = pack(messages);
        let bodies: Vec<&str> = packed.iter().map(|p| p.body.as_str()).collect();
        let (unsent_bodies, error) = self.send_bodies(&bodies).await;
        Unsent {
            messages: unsent_bodies
                .into_iter()
                .flat_map(|body| packed[body].messages.clone())
                .collect(),
            error,
        }
    }
}

/// How long a build's first page waits: the users index it pages is eventually
/// consistent, and a user created just before the definition must be in it (it is
/// within a second; changes after the definition are evaluated live).
const BUILD_START_DELAY_SECS: i32 = 2;

/// A build task as an SQS body.
#[derive(serde::Serialize, serde::Deserialize)]
struct BuildBody<'a> {
    workspace_id: std::borrow::Cow<'a, str>,
    audience_id: std::borrow::Cow<'a, str>,
    rule_rev: u64,
    #[serde(default)]
    cursor: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    drop: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sharded: bool,
}

/// The build task a body holds, or `None` if it holds none.
pub fn decode_build(body: &str) -> Option<BuildTask> {
    let task: BuildBody = serde_json::from_str(body).ok()?;
    Some(BuildTask {
        workspace_id: task.workspace_id.into_owned(),
        audience_id: task.audience_id.into_owned(),
        rule_rev: task.rule_rev,
        cursor: task.cursor.map(std::borrow::Cow::into_owned),
        drop: task.drop,
        sharded: task.sharded,
    })
}

impl BuildQueue for SqsQueue {
    async fn send(&self, task: &BuildTask) -> Result<(), PortError> {
        let body = BuildBody {
            workspace_id: task.workspace_id.as_str().into(),
            audience_id: task.audience_id.as_str().into(),
            rule_rev: task.rule_rev,
            cursor: task.cursor.as_deref().map(Into::into),
            drop: task.drop,
            sharded: task.sharded,
        };
        let body = serde_json::to_string(&body)
            .map_err(|_| PortError::Refused("build task not encoded".into()))?;
        let first_page = task.cursor.is_none() && !task.drop;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(if first_page {
                BUILD_START_DELAY_SECS
            } else {
                0
            })
            .send()
            .await?;
        Ok(())
    }
}

/// The audiences function's queues: build tasks, parked users to settle again, and time
/// tasks.
#[derive(Clone)]
pub struct AudienceQueues {
    pub builds: SqsQueue,
    pub retries: SqsQueue,
    pub time: SqsQueue,
}

/// A time task as an SQS body.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeBody {
    shard: u32,
    until_ms: i64,
}

/// The time task a body holds, or `None` if it holds none.
pub fn decode_time(body: &str) -> Option<TimeTask> {
    let task: TimeBody = serde_json::from_str(body).ok()?;
    Some(TimeTask {
        shard: task.shard,
        until_ms: task.until_ms,
    })
}

impl TimeTasks for AudienceQueues {
    async fn send_time(&self, tasks: &[TimeTask]) -> Result<(), PortError> {
        let bodies: Vec<String> = tasks
            .iter()
            .map(|task| {
                let body = TimeBody {
                    shard: task.shard,
                    until_ms: task.until_ms,
                };
                serde_json::to_string(&body)
            })
            .collect::<Result<_, _>>()
            .map_err(|_| PortError::Refused("time task not encoded".into()))?;
        self.time.send_all_bodies(&bodies).await
    }
}

impl BuildQueue for AudienceQueues {
    async fn send(&self, task: &BuildTask) -> Result<(), PortError> {
        BuildQueue::send(&self.builds, task).await
    }
}

/// A parked user as an SQS body (no other body reads as one).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ParkedUser<'a> {
    workspace_id: std::borrow::Cow<'a, str>,
    external_user_id: std::borrow::Cow<'a, str>,
}

/// The user a parked user's body names, or `None` if it names none.
pub fn decode_parked(body: &str) -> Option<UserKey> {
    let parked: ParkedUser = serde_json::from_str(body).ok()?;
    Some((
        parked.workspace_id.into_owned(),
        parked.external_user_id.into_owned(),
    ))
}

impl ParkedUsers for AudienceQueues {
    async fn park(&self, users: &[UserKey]) -> Result<(), PortError> {
        let bodies: Vec<String> = users
            .iter()
            .map(|(workspace_id, user_id)| {
                let parked = ParkedUser {
                    workspace_id: workspace_id.into(),
                    external_user_id: user_id.into(),
                };
                serde_json::to_string(&parked).map(sqs_safe)
            })
            .collect::<Result<_, _>>()
            .map_err(|_| PortError::Refused("parked user not encoded".into()))?;
        self.retries.send_all_bodies(&bodies).await
    }
}

mod wakes;
pub use wakes::{decode_wake, WakeMessage};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Changes, ProfileField, Stamp, MESSAGE_VERSION};
    use serde_json::json;

    #[test]
    fn an_unreadable_body_is_told_by_kind_and_place_never_by_its_data() {
        let unread = decode(r#"{"workspace_id":"jane@acme.io","v":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(!unread.contains("jane"), "{unread}");
    }

    #[test]
    fn build_tasks_read_as_written_and_as_bodies_in_flight_were() {
        let task = BuildTask {
            workspace_id: "ws".into(),
            audience_id: "trials".into(),
            rule_rev: 7,
            cursor: Some("u-9".into()),
            drop: true,
            sharded: true,
        };
        let body = BuildBody {
            workspace_id: "ws".into(),
            audience_id: "trials".into(),
            rule_rev: 7,
            cursor: Some("u-9".into()),
            drop: true,
            sharded: true,
        };
        assert_eq!(
            decode_build(&serde_json::to_string(&body).unwrap()),
            Some(task)
        );
        // A first page sent before cursor and drop were optional, and a drop sent
        // before lists were sharded (its list is one).
        let old = r#"{"workspace_id":"ws","audience_id":"a","rule_rev":1}"#;
        let first = decode_build(old).unwrap();
        assert_eq!(
            (first.cursor, first.drop, first.sharded),
            (None, false, false)
        );
        let old_drop = r#"{"workspace_id":"ws","audience_id":"a","rule_rev":1,"drop":true}"#;
        assert!(!decode_build(old_drop).unwrap().sharded);
        assert_eq!(decode_build(r#"{"shard":1,"until_ms":2}"#), None);
    }

    #[test]
    fn a_parked_user_reads_back_as_written_and_nothing_else_reads_as_one() {
        let body = serde_json::to_string(&ParkedUser {
            workspace_id: "ws".into(),
            external_user_id: "usr \u{fffe} \"42\"".into(),
        })
        .map(sqs_safe)
        .unwrap();
        assert!(!body.contains('\u{fffe}'), "SQS-safe");
        assert_eq!(
            decode_parked(&body),
            Some(("ws".to_owned(), "usr \u{fffe} \"42\"".to_owned()))
        );
        let upsert = r#"{"workspace_id":"ws","external_user_id":"u","v":1}"#;
        for other in [
            "",
            "[]",
            "{}",
            r#"{"workspace_id":"ws"}"#,
            r#"{"workspace_id":1,"external_user_id":"u"}"#,
            upsert,
        ] {
            assert_eq!(decode_parked(other), None, "{other}");
        }
    }

    #[test]
    fn a_time_task_reads_back_as_written_and_nothing_else_reads_as_one() {
        let task = TimeTask {
            shard: 63,
            until_ms: 1_800_000_000_000,
        };
        let body = serde_json::to_string(&TimeBody {
            shard: task.shard,
            until_ms: task.until_ms,
        })
        .unwrap();
        assert_eq!(decode_time(&body), Some(task));
        for other in [
            "",
            "{}",
            r#"{"shard":1}"#,
            r#"{"workspace_id":"ws","external_user_id":"u"}"#,
        ] {
            assert_eq!(decode_time(other), None, "{other}");
        }
    }

    #[test]
    fn message_round_trips_with_removals() {
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("jane@acme.io".into()));
        changes.profile.insert(ProfileField::Plan, None);
        changes
            .traits
            .insert("color".into(), Some(json!({"a": [1, 2.5]})));
        changes.traits.insert("gone".into(), None);
        let message = UpsertMessage {
            version: MESSAGE_VERSION,
            workspace_id: "ws".into(),
            external_user_id: "usr_42".into(),
            stamp: Stamp::new(1_700_000_000_000, "r1"),
            changes,
            erase: false,
        };
        assert_eq!(decode(&encode(&message)).unwrap().remove(0), message);
    }

    fn numbered(count: usize, trait_bytes: usize) -> Vec<UpsertMessage> {
        (0..count)
            .map(|i| {
                let mut changes = Changes::default();
                changes
                    .traits
                    .insert("blob".into(), Some(json!("x".repeat(trait_bytes))));
                UpsertMessage {
                    version: MESSAGE_VERSION,
                    workspace_id: "ws".into(),
                    external_user_id: format!("u{i}"),
                    stamp: Stamp::new(1, format!("r.{i:04}")),
                    changes,
                    erase: false,
                }
            })
            .collect()
    }

    #[test]
    fn pack_fills_bodies_in_order_within_the_limits() {
        for (count, trait_bytes) in [
            (1, 10),
            (49, 10),
            (50, 10),
            (51, 10),
            (1_000, 300),
            (40, 20_000),
            (3, 33_000),
        ] {
            let messages = numbered(count, trait_bytes);
            let packed = pack(&messages);
            let mut next = 0;
            for body in &packed {
                assert_eq!(body.messages.start, next);
                next = body.messages.end;
                assert!(body.messages.len() <= MAX_PACKED_MESSAGES);
                assert!(body.messages.len() == 1 || body.body.len() <= MAX_PACKED_BYTES);
                let unpacked = decode(&body.body).unwrap();
                assert_eq!(unpacked, messages[body.messages.clone()]);
            }
            assert_eq!(next, count);
            // Nothing could have joined the body before it.
            for pair in packed.windows(2) {
                let first = encode(&messages[pair[1].messages.start]);
                assert!(
                    pair[0].messages.len() == MAX_PACKED_MESSAGES
                        || pair[0].body.len() + first.len() + 1 > MAX_PACKED_BYTES
                );
            }
        }
        assert_eq!(pack(&numbered(1_000, 300)).len(), 20);
        assert!(!pack(&numbered(1, 10))[0].body.starts_with('['));
    }

    #[test]
    fn packed_bodies_that_hold_nothing_or_garbage_are_refused() {
        assert!(matches!(decode("[]"), Err(MessageError::Empty)));
        assert!(matches!(decode(" [1]"), Err(MessageError::Malformed(_))));
        let one = encode(&numbered(1, 1)[0]);
        let old = one.replace(&format!("\"version\":{MESSAGE_VERSION}"), "\"version\":9");
        assert!(matches!(
            decode(&format!("[{one},{old}]")),
            Err(MessageError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn characters_sqs_refuses_travel_as_escapes_and_come_back_unchanged() {
        let mut message = numbered(1, 1).remove(0);
        let value = json!("a\u{fffe}b\u{ffff}c\u{fffd}");
        message
            .changes
            .traits
            .insert("odd".into(), Some(value.clone()));
        let body = encode(&message);
        assert!(!body.contains(['\u{fffe}', '\u{ffff}']), "{body}");
        assert!(body.contains("\\ufffe") && body.contains('\u{fffd}'));
        let back = decode(&body).unwrap().remove(0);
        assert_eq!(back.changes.traits["odd"], Some(value));
    }

    #[test]
    fn unknown_version_is_refused() {
        let body = r#"{"version":9,"workspace_id":"w","external_user_id":"u","stamp":{"accepted_at":1,"request_id":"r"},"changes":{}}"#;
        assert!(matches!(
            decode(body),
            Err(MessageError::UnsupportedVersion(9))
        ));
    }
}
