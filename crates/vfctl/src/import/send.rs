//! One batch to the API: its request retried until answered, the entries the API
//! could not enqueue sent again (with the later entries of their users), and each
//! refused user as the rejected file lists it.

use super::plan::{idempotency_key, Batch, Entry};
use crate::error::CommandError;
use serde_json::{json, Value};
use std::time::Duration;

/// Attempts of one request before the run stops (it can be resumed).
const MAX_ATTEMPTS: u32 = 10;
/// Resends of the entries the API could not enqueue, before they count as refused.
const UNAVAILABLE_RESENDS: usize = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// One batch's outcome.
pub struct Done {
    pub index: usize,
    pub users: usize,
    pub accepted: usize,
    pub replayed: bool,
    pub rejected: Vec<Value>,
}

pub struct Sender<'a> {
    pub client: &'a reqwest::Client,
    pub endpoint: &'a str,
    pub key: &'a str,
    pub file_sha256: &'a str,
    pub batch_size: usize,
}

impl Sender<'_> {
    pub async fn send(&self, batch: Batch) -> Result<Done, CommandError> {
        let mut rejected: Vec<Value> = batch
            .refused
            .iter()
            .map(|(line, refusal)| json!({"line": line, "errors": [{"code": refusal.code, "message": refusal.message}]}))
            .collect();
        let base_key = idempotency_key(self.file_sha256, self.batch_size, batch.index);
        let mut pending: Vec<&Entry> = batch.entries.iter().collect();
        let mut accepted = 0;
        let mut replayed = false;
        for resend in 0..=UNAVAILABLE_RESENDS {
            if pending.is_empty() {
                break;
            }
            // A resend of the unavailable ones is a new request: a key of its own.
            let key = if resend == 0 {
                base_key.clone()
            } else {
                format!("{base_key}-resend{resend}")
            };
            let (answer, was_replayed) = self
                .post(&key, Batch::body_of(pending.iter().copied()))
                .await?;
            replayed |= was_replayed && resend == 0;
            accepted += answer["data"]["accepted"].as_u64().unwrap_or(0) as usize;
            let mut unavailable: Vec<usize> = Vec::new();
            let mut refused_now: Vec<usize> = Vec::new();
            for refused in answer["data"]["rejected"].as_array().into_iter().flatten() {
                let Some(entry) = refused["index"]
                    .as_u64()
                    .and_then(|i| pending.get(i as usize))
                else {
                    return Err(CommandError::Api(format!(
                        "batch {}: the API answered an index it was not sent",
                        batch.index
                    )));
                };
                refused_now.push(refused["index"].as_u64().unwrap_or_default() as usize);
                let errors = &refused["errors"];
                let only_unavailable = errors
                    .as_array()
                    .is_some_and(|e| e.iter().all(|e| e["code"] == "unavailable"));
                if only_unavailable && resend < UNAVAILABLE_RESENDS {
                    unavailable.push(refused["index"].as_u64().unwrap_or_default() as usize);
                } else {
                    rejected.push(rejection(
                        entry,
                        errors,
                        refused["index"].as_u64().unwrap_or_default(),
                    ));
                }
            }
            if unavailable.is_empty() {
                break;
            }
            let users: Vec<Option<String>> = pending.iter().map(|e| user_of(e)).collect();
            let again = resend_set(&users, &unavailable, &refused_now);
            // Accepted entries sent again are counted again if accepted again.
            accepted = accepted.saturating_sub(again.len() - unavailable.len());
            pending = again.into_iter().map(|i| pending[i]).collect();
        }
        Ok(Done {
            index: batch.index,
            users: batch.users(),
            accepted,
            replayed,
            rejected,
        })
    }

    /// One request until it is answered 202 or 207: 429, 409 and 5xx and network
    /// errors are retried (Retry-After when given); any other answer stops the run.
    async fn post(
        &self,
        idempotency_key: &str,
        body: String,
    ) -> Result<(Value, bool), CommandError> {
        let mut last_error = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            let sent = self
                .client
                .post(self.endpoint)
                .bearer_auth(self.key)
                .header("content-type", "application/json")
                .header("idempotency-key", idempotency_key)
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(err) => {
                    last_error = format!("request failed: {err}");
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let replayed = response.headers().contains_key("idempotent-replayed");
            let text = response.text().await.unwrap_or_default();
            match status {
                202 | 207 => {
                    let answer = serde_json::from_str(&text)
                        .map_err(|e| CommandError::Api(format!("answer is not JSON: {e}")))?;
                    return Ok((answer, replayed));
                }
                409 | 429 | 500..=599 => {
                    last_error = format!("HTTP {status}: {text}");
                    tokio::time::sleep(backoff(attempt, retry_after)).await;
                }
                _ => {
                    let refused = format!("the API refused a batch (HTTP {status}): {text}");
                    return Err(CommandError::Api(refused));
                }
            }
        }
        Err(CommandError::Api(format!(
            "gave up after {MAX_ATTEMPTS} attempts; run again to resume. Last: {last_error}"
        )))
    }
}

/// The `external_user_id` an entry's body names.
fn user_of(entry: &Entry) -> Option<String> {
    let body: Value = serde_json::from_str(&entry.body).ok()?;
    body["external_user_id"].as_str().map(str::to_owned)
}

/// What to send again after some entries (`unavailable`, indices into the batch as
/// sent) could not be enqueued: those, and every later accepted entry of the same users
/// (not the ones `refused` for their content). A resend is stamped anew, so a later
/// entry sent alone before it would otherwise lose to the earlier one ("later entries
/// win" holds for the resend too).
fn resend_set(users: &[Option<String>], unavailable: &[usize], refused: &[usize]) -> Vec<usize> {
    let mut first_unavailable: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::new();
    for &index in unavailable {
        if let Some(Some(user)) = users.get(index) {
            let first = first_unavailable.entry(user).or_insert(index);
            *first = (*first).min(index);
        }
    }
    (0..users.len())
        .filter(|&index| {
            unavailable.contains(&index)
                || !refused.contains(&index)
                    && users[index]
                        .as_deref()
                        .and_then(|user| first_unavailable.get(user))
                        .is_some_and(|&first| first < index)
        })
        .collect()
}

fn backoff(attempt: u32, retry_after_secs: Option<u64>) -> Duration {
    match retry_after_secs {
        Some(secs) => Duration::from_secs(secs).min(MAX_BACKOFF),
        None => (Duration::from_millis(200) * 2u32.saturating_pow(attempt)).min(MAX_BACKOFF),
    }
}

/// A refused user as the rejected file lists it: the line, the errors with paths of
/// the upsert itself (`email`, not `users[3].email`), and the body as sent.
fn rejection(entry: &Entry, errors: &Value, index: u64) -> Value {
    let prefix = format!("users[{index}]");
    let errors: Vec<Value> = errors
        .as_array()
        .into_iter()
        .flatten()
        .map(|error| {
            let mut error = error.clone();
            let own = error["field"]
                .as_str()
                .and_then(|field| field.strip_prefix(&prefix))
                .map(|rest| rest.trim_start_matches('.').to_owned());
            match own {
                Some(rest) if rest.is_empty() => {
                    if let Some(fields) = error.as_object_mut() {
                        fields.remove("field");
                    }
                }
                Some(rest) => error["field"] = json!(rest),
                None => {}
            }
            error
        })
        .collect();
    let body: Value = serde_json::from_str(&entry.body).unwrap_or(Value::Null);
    json!({"line": entry.line, "errors": errors, "body": body})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_carries_the_later_entries_of_the_same_users() {
        let users: Vec<Option<String>> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|u| Some((*u).to_owned()))
            .collect();
        assert_eq!(resend_set(&users, &[2], &[2]), vec![2, 4]);
        assert_eq!(resend_set(&users, &[1, 3], &[1, 3]), vec![1, 3, 5]);
        // A later entry refused for its content is not sent again.
        assert_eq!(resend_set(&users, &[0], &[0, 4]), vec![0, 2]);
        assert_eq!(resend_set(&users, &[], &[]), Vec::<usize>::new());
        assert_eq!(resend_set(&[None, None], &[0], &[0]), vec![0]);
    }

    #[test]
    fn rejected_errors_lose_the_batch_prefix() {
        let entry = Entry {
            line: 7,
            body: r#"{"external_user_id":""}"#.into(),
        };
        let errors = json!([
            {"code": "empty", "field": "users[3].external_user_id", "message": "m"},
            {"code": "invalid_type", "field": "users[3]", "message": "m"},
        ]);
        assert_eq!(
            rejection(&entry, &errors, 3),
            json!({"line": 7, "body": {"external_user_id": ""}, "errors": [
                {"code": "empty", "field": "external_user_id", "message": "m"},
                {"code": "invalid_type", "message": "m"},
            ]})
        );
    }
}
