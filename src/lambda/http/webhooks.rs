//! The webhook routes at the edge: the request read, the use case (`app::webhooks`)
//! called, the endpoint shown as the contract shows it (its secret on creation and
//! rotation only).

use super::answers::Success;
use super::{header, page_of, Api, ApiError, Route};
use crate::app::accept::Accepted;
use crate::app::ports::{
    ApiKeys, Audiences, BuildQueue, Counters, DeliveryLog, Endpoint, IdempotencyKeys,
    LoggedAttempt, Memberships, ReplayTasks, UpsertQueue, Users, Webhooks,
};
use crate::app::Caller;
use crate::contract::{checked_body, parse_replay, parse_webhook, Paged, UPSERT_BODY};
use crate::domain::auth::{ApiKeyRecord, Scope};
use crate::domain::format_millis;
use lambda_http::Request;
use serde_json::{json, Value};

impl<K, I, Q, C, U, S, B, W> Api<K, I, Q, C, U, S, B, W>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
    S: Audiences + Memberships,
    B: BuildQueue + ReplayTasks,
    W: Webhooks + DeliveryLog,
{
    /// The webhook routes.
    pub(super) async fn webhooks(
        &self,
        route: &Route,
        request: &Request,
        caller: &Caller,
        key: &ApiKeyRecord,
        now_ms: i64,
    ) -> Result<Success, ApiError> {
        let subscriptions = &self.subscriptions;
        Ok(match route {
            Route::PutWebhook(id) => {
                let content_type = header(request.headers(), header::CONTENT_TYPE);
                let parse = |body: &[u8]| parse_webhook(body, self.webhook_reach);
                let definition =
                    checked_body(content_type, request.body().as_ref(), &UPSERT_BODY, parse);
                let reads_pii = key.allows(Scope::UsersReadPii);
                let subscribed = subscriptions
                    .put(caller, id, definition, reads_pii, now_ms)
                    .await?;
                if subscribed.created {
                    Success::Created(webhook_with_secret(&subscribed.endpoint))
                } else {
                    Success::Data(webhook_view(&subscribed.endpoint))
                }
            }
            Route::GetWebhook(id) => {
                Success::Data(webhook_view(&subscriptions.get(caller, id, now_ms).await?))
            }
            Route::ListWebhooks => {
                let page = page_of(request, Paged::Webhooks);
                let listed = subscriptions.list(caller, page, now_ms).await?;
                Success::Page {
                    data: listed.endpoints.iter().map(webhook_view).collect(),
                    next_cursor: listed.next_cursor,
                }
            }
            Route::RotateWebhookSecret(id) => Success::Data(webhook_with_secret(
                &subscriptions.rotate(caller, id, now_ms).await?,
            )),
            Route::WebhookDeliveries(id) => {
                let page = page_of(request, Paged::Deliveries { webhook_id: id });
                let found = subscriptions.deliveries(caller, id, page, now_ms).await?;
                Success::Page {
                    data: found.attempts.iter().map(attempt_view).collect(),
                    next_cursor: found.next_cursor,
                }
            }
            Route::ReplayWebhook(id) => {
                let content_type = header(request.headers(), header::CONTENT_TYPE);
                let parse = |body: &[u8]| parse_replay(body, now_ms);
                let asked =
                    checked_body(content_type, request.body().as_ref(), &UPSERT_BODY, parse);
                let replay_id = subscriptions.replay(caller, id, asked, now_ms).await?;
                Success::Started(json!({ "replay_id": replay_id }))
            }
            Route::DeleteWebhook(id) => {
                subscriptions.delete(caller, id, now_ms).await?;
                Success::Accepted(Accepted::One { replayed: false })
            }
            _ => unreachable!("the other routes are served elsewhere"),
        })
    }
}

/// A webhook endpoint as the api shows it: never its secrets, which
/// [`webhook_with_secret`] shows on creation and rotation only.
pub fn webhook_view(endpoint: &Endpoint) -> Value {
    let mut shown = json!({
        "webhook_id": endpoint.webhook_id,
        "url": endpoint.url,
        "events": endpoint.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "audiences": endpoint.audiences,
        "include": if endpoint.include_profile { vec!["profile"] } else { vec![] },
        "status": if endpoint.disabled.is_some() { "disabled" } else { "enabled" },
        "created_at": format_millis(endpoint.created_at),
        "updated_at": format_millis(endpoint.updated_at),
    });
    if let Some(since) = endpoint.failing_since {
        shown["failing_since"] = json!(format_millis(since));
    }
    if let Some(disabled) = endpoint.disabled {
        shown["disabled_reason"] = json!(disabled.reason.as_str());
        shown["disabled_at"] = json!(format_millis(disabled.at));
    }
    shown
}

/// A line of an endpoint's attempt log as the api shows it: the delivery (its
/// `webhook-id`, type, user, `sequence`), what became of it, and the attempt (its answer
/// or why none came, how long it took, when the next is due).
pub fn attempt_view(line: &LoggedAttempt) -> Value {
    let body: Value = serde_json::from_str(&line.body).unwrap_or(Value::Null);
    json!({
        "webhook_message_id": line.message_id,
        "type": body["type"],
        "external_user_id": (!line.user_id.is_empty()).then_some(&line.user_id),
        "sequence": line.sequence,
        "status": line.status.as_str(),
        "attempted_at": format_millis(line.at),
        "http_status": line.http_status,
        "error": line.error,
        "latency_ms": line.latency_ms,
        "next_attempt_at": line.next_attempt_at.and_then(format_millis),
    })
}

/// [`webhook_view`] with the secret that signs from now on and, after a rotation, until
/// when the previous one signs too.
pub fn webhook_with_secret(endpoint: &Endpoint) -> Value {
    let mut shown = webhook_view(endpoint);
    shown["secret"] = json!(endpoint.secret.0);
    if let Some((_, until)) = endpoint.previous_secret {
        shown["previous_secret_expires_at"] = json!(format_millis(until));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::{DeliveryStatus, Disabled};
    use crate::domain::webhook::{DisabledReason, EventType, Secret};

    const T0: i64 = 1_800_000_000_000;

    fn endpoint() -> Endpoint {
        Endpoint {
            webhook_id: "crm".into(),
            url: "https://hooks.example.com/vf".into(),
            events: [EventType::UserChanged, EventType::WebhookDisabled].into(),
            audiences: None,
            include_profile: false,
            secret: Secret("whsec_current".into()),
            previous_secret: Some((Secret("whsec_previous".into()), T0 + 1)),
            created_at: T0,
            updated_at: T0,
            failing_since: None,
            disabled: None,
        }
    }

    #[test]
    fn an_endpoint_shows_its_health_and_never_a_secret_unasked() {
        let healthy = webhook_view(&endpoint());
        assert_eq!(
            healthy,
            json!({
                "webhook_id": "crm",
                "url": "https://hooks.example.com/vf",
                "events": ["user.changed", "webhook.disabled"],
                "audiences": null,
                "include": [],
                "status": "enabled",
                "created_at": "2027-01-15T08:00:00.000Z",
                "updated_at": "2027-01-15T08:00:00.000Z",
            })
        );

        let failing = webhook_view(&Endpoint {
            failing_since: Some(T0 + 1_000),
            ..endpoint()
        });
        assert_eq!(failing["status"], "enabled");
        assert_eq!(failing["failing_since"], "2027-01-15T08:00:01.000Z");

        let disabled = webhook_view(&Endpoint {
            failing_since: Some(T0),
            disabled: Some(Disabled {
                reason: DisabledReason::Failing,
                at: T0 + 2_000,
                announced: true,
            }),
            ..endpoint()
        });
        assert_eq!(disabled["status"], "disabled");
        assert_eq!(disabled["disabled_reason"], "failing");
        assert_eq!(disabled["disabled_at"], "2027-01-15T08:00:02.000Z");
        for shown in [healthy, failing, disabled] {
            assert!(!shown.to_string().contains("whsec_"), "{shown}");
        }

        let with_secret = webhook_with_secret(&endpoint());
        assert_eq!(with_secret["secret"], "whsec_current");
        assert_eq!(
            with_secret["previous_secret_expires_at"],
            "2027-01-15T08:00:00.001Z"
        );
        assert!(!with_secret.to_string().contains("whsec_previous"));
    }

    #[test]
    fn a_log_line_shows_the_delivery_and_its_attempt() {
        let body = r#"{"type":"user.changed","webhook_id":"crm","sequence":7,"data":{}}"#;
        let line = LoggedAttempt {
            at: T0,
            message_id: "msg_ev1".into(),
            user_id: "u1".into(),
            sequence: 7,
            body: body.into(),
            status: DeliveryStatus::Retrying,
            http_status: None,
            error: Some("timeout".into()),
            latency_ms: Some(15_000),
            next_attempt_at: Some(T0 + 5_000),
        };
        assert_eq!(
            attempt_view(&line),
            json!({
                "webhook_message_id": "msg_ev1",
                "type": "user.changed",
                "external_user_id": "u1",
                "sequence": 7,
                "status": "retrying",
                "attempted_at": "2027-01-15T08:00:00.000Z",
                "http_status": null,
                "error": "timeout",
                "latency_ms": 15_000,
                "next_attempt_at": "2027-01-15T08:00:05.000Z",
            })
        );
        let unsent = attempt_view(&LoggedAttempt {
            user_id: String::new(),
            status: DeliveryStatus::GivenUp,
            error: Some("disabled".into()),
            latency_ms: None,
            next_attempt_at: None,
            ..line
        });
        assert_eq!(
            unsent["external_user_id"],
            Value::Null,
            "an endpoint's own event"
        );
        assert_eq!(unsent["status"], "given_up");
        assert_eq!(unsent["latency_ms"], Value::Null);
    }
}
