//! `vfctl dlq`: the stack's dead-letter queues, each beside the queue its messages came
//! from (`docs/runbooks.md` says when to redrive each). Upserts: answered 202 and not
//! applied yet. Build pages: an audience stays building. Parked users: their audiences
//! keep the state before their last change. SQS deletes a message 14 days after it was
//! first enqueued. Carrying any of them out again is harmless (merges, builds and
//! settlements are idempotent), so a redrive may repeat a message without changing
//! anything.

use crate::cli::{DeadLetterQueue, DlqCommand};
use crate::error::CommandError;
use crate::target::Target;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use serde::Serialize;
use serde_json::json;
use std::time::Duration;
use vibefollow_users::app::ports::PortError;
use vibefollow_users::aws::sqs::decode_parked;
use vibefollow_users::clock::now_millis;

/// SQS keeps a message this long after it was first enqueued (template.yaml:
/// MessageRetentionPeriod of both queues; a dead-lettered message keeps its age).
const RETENTION: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// Messages a status read looks at, at most, to find the oldest.
const MOST_INSPECTED: usize = 10_000;
/// How long inspected messages stay hidden before they are released again.
const INSPECT_VISIBILITY_SECS: i32 = 30;
/// Parked users a status shows, at most.
const MOST_SHOWN: usize = 100;

/// `vfctl dlq status|redrive`: finds the queues of `--queue` and runs the command on
/// them; the answer goes to stdout as JSON.
pub async fn run(target: &Target, command: DlqCommand) -> Result<(), CommandError> {
    let (DlqCommand::Status { queue: which } | DlqCommand::Redrive { queue: which }) = command;
    let ((dlq_var, dlq_output), source) = which.resources();
    let dlq = target.resource(dlq_var, dlq_output).await?;
    let queue = match (source, &command) {
        (Some((var, output)), _) => Some(target.resource(var, output).await?),
        (None, DlqCommand::Status { .. }) => None,
        (None, DlqCommand::Redrive { .. }) => return Err(
            "a missed tick has nothing to redrive: the next tick settles whatever is due. Fix the cause (docs/runbooks.md, AudienceTickDeadLetterAlarm), check that ticks arrive, then purge the queue".into(),
        ),
    };
    let shows_users = matches!(which, DeadLetterQueue::Parked);
    let sqs = Client::new(&target.sdk);
    let dead = DeadLetters::new(sqs, dlq, queue, shows_users);
    let answer = match command {
        DlqCommand::Status { .. } => dead.status(now_millis()).await.map(|s| json!(s)),
        DlqCommand::Redrive { .. } => dead.redrive().await.map(|r| json!(r)),
    };
    let answer = answer.map_err(CommandError::aws("the dead-letter queue"))?;
    println!("{answer}");
    Ok(())
}

/// The dead-letter queue and the queue its messages came from.
pub struct DeadLetters {
    client: Client,
    dlq_url: String,
    /// None for a queue fed by no queue (ticks): status only.
    queue_url: Option<String>,
    /// Its messages are parked users, ids only: a status shows them.
    shows_users: bool,
}

#[derive(Debug, Serialize)]
pub struct ParkedUser {
    pub workspace_id: String,
    pub external_user_id: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// Messages waiting (plus any being redriven or inspected right now).
    pub messages: u64,
    /// When the oldest was first enqueued, epoch ms; SQS deletes it 14 days after.
    pub oldest_sent_at_ms: Option<i64>,
    pub oldest_expires_in_hours: Option<f64>,
    /// Whether more messages wait than a status read looks at.
    pub inspected_all: bool,
    /// The parked queue's users (the first 100 looked at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<ParkedUser>>,
}

#[derive(Debug, Serialize)]
pub struct Redriven {
    /// `message-move-task` (SQS's own, asynchronous) or `receive-send-delete`.
    pub method: &'static str,
    /// Messages moved back (for a move task: what SQS counted when it started).
    pub messages: u64,
    /// Why the move task was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_task_refused: Option<String>,
}

impl DeadLetters {
    pub fn new(
        client: Client,
        dlq_url: String,
        queue_url: Option<String>,
        shows_users: bool,
    ) -> Self {
        Self {
            client,
            dlq_url,
            queue_url,
            shows_users,
        }
    }

    pub async fn status(&self, now_ms: i64) -> Result<Status, PortError> {
        let messages = self.depth(&self.dlq_url).await?;
        let (oldest, inspected, users) = self.inspect().await?;
        let expires_in = oldest.map(|sent| {
            let expires_ms = sent + RETENTION.as_millis() as i64;
            ((expires_ms - now_ms) as f64 / 3_600_000.0 * 10.0).round() / 10.0
        });
        Ok(Status {
            messages,
            oldest_sent_at_ms: oldest,
            oldest_expires_in_hours: expires_in,
            inspected_all: inspected < MOST_INSPECTED,
            users: self.shows_users.then_some(users),
        })
    }

    /// Moves every message back to the upsert queue: with SQS's message-move task
    /// where the service has it, otherwise by receiving, sending and deleting.
    pub async fn redrive(&self) -> Result<Redriven, PortError> {
        let Some(queue_url) = &self.queue_url else {
            return Err(PortError::Refused("no queue to redrive to".into()));
        };
        let waiting = self.depth(&self.dlq_url).await?;
        let dlq_arn = self.arn(&self.dlq_url).await?;
        let queue_arn = self.arn(queue_url).await?;
        let task = self
            .client
            .start_message_move_task()
            .source_arn(dlq_arn)
            .destination_arn(queue_arn)
            .send()
            .await;
        match task {
            Ok(_) => Ok(Redriven {
                method: "message-move-task",
                messages: waiting,
                move_task_refused: None,
            }),
            // An SQS without the operation (the local emulator answers 500), or a task
            // already running: move them here, one batch at a time.
            Err(err) => Ok(Redriven {
                method: "receive-send-delete",
                messages: self.move_one_by_one(queue_url).await?,
                move_task_refused: Some(PortError::from(err).into_code()),
            }),
        }
    }

    async fn move_one_by_one(&self, queue_url: &str) -> Result<u64, PortError> {
        let mut moved = 0;
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .send()
                .await?;
            let messages = received.messages();
            if messages.is_empty() {
                return Ok(moved);
            }
            let entries = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(m.body()?)
                        .build()
                        .ok()
                })
                .collect();
            let sent = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await?;
            // Only what the queue took leaves the DLQ; the rest is seen again next time.
            let deletes = sent
                .successful()
                .iter()
                .filter_map(|ok| {
                    let handle = messages
                        .get(ok.id().parse::<usize>().ok()?)?
                        .receipt_handle()?;
                    DeleteMessageBatchRequestEntry::builder()
                        .id(ok.id())
                        .receipt_handle(handle)
                        .build()
                        .ok()
                })
                .collect::<Vec<_>>();
            moved += deletes.len() as u64;
            if !deletes.is_empty() {
                self.client
                    .delete_message_batch()
                    .queue_url(&self.dlq_url)
                    .set_entries(Some(deletes))
                    .send()
                    .await?;
            }
            if !sent.failed().is_empty() {
                return Err(PortError::Unavailable(sent.failed()[0].code().to_owned()));
            }
        }
    }

    /// The earliest first-enqueue time among the messages, looked at by receiving them
    /// (hidden for a moment, then released), how many were looked at, and the first
    /// parked users among them.
    async fn inspect(&self) -> Result<(Option<i64>, usize, Vec<ParkedUser>), PortError> {
        let mut oldest: Option<i64> = None;
        let mut inspected = 0;
        let mut users = Vec::new();
        let mut handles = Vec::new();
        while inspected < MOST_INSPECTED {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(INSPECT_VISIBILITY_SECS)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await?;
            if received.messages().is_empty() {
                break;
            }
            for message in received.messages() {
                inspected += 1;
                let sent = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse::<i64>().ok());
                oldest = match (oldest, sent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                handles.extend(message.receipt_handle().map(str::to_owned));
                let parked = message.body().and_then(decode_parked);
                if let Some((workspace_id, external_user_id)) = parked {
                    if users.len() < MOST_SHOWN {
                        users.push(ParkedUser {
                            workspace_id,
                            external_user_id,
                        });
                    }
                }
            }
        }
        self.release(&handles).await?;
        Ok((oldest, inspected, users))
    }

    /// Makes inspected messages visible again at once.
    async fn release(&self, handles: &[String]) -> Result<(), PortError> {
        for chunk in handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.dlq_url)
                .set_entries(Some(entries))
                .send()
                .await?;
        }
        Ok(())
    }

    async fn depth(&self, url: &str) -> Result<u64, PortError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        Ok(out
            .attributes()
            .into_iter()
            .flatten()
            .filter_map(|(_, value)| value.parse::<u64>().ok())
            .sum())
    }

    async fn arn(&self, url: &str) -> Result<String, PortError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| PortError::Refused("no QueueArn".into()))
    }
}
