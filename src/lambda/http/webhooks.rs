//! The webhook routes at the edge: the request read, the use case (`app::webhooks`)
//! called, the endpoint shown as the contract shows it (its secret on creation and
//! rotation only).

use super::answers::Success;
use super::{header, Api, ApiError, Route};
use crate::app::accept::Accepted;
use crate::app::ports::{
    ApiKeys, Audiences, BuildQueue, Counters, Endpoint, IdempotencyKeys, Memberships, UpsertQueue,
    Users, Webhooks,
};
use crate::app::Caller;
use crate::contract::{checked_body, parse_webhook, Paged, UPSERT_BODY};
use crate::domain::auth::{ApiKeyRecord, Scope};
use crate::domain::format_millis;
use lambda_http::{Request, RequestExt};
use serde_json::{json, Value};

impl<K, I, Q, C, U, S, B, W> Api<K, I, Q, C, U, S, B, W>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
    S: Audiences + Memberships,
    B: BuildQueue,
    W: Webhooks,
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
                let query = request.query_string_parameters_ref();
                let page = Paged::Webhooks.query(
                    query.and_then(|q| q.first("limit")),
                    query.and_then(|q| q.first("cursor")),
                );
                let listed = subscriptions.list(caller, page, now_ms).await?;
                Success::Page {
                    data: listed.endpoints.iter().map(webhook_view).collect(),
                    next_cursor: listed.next_cursor,
                }
            }
            Route::RotateWebhookSecret(id) => Success::Data(webhook_with_secret(
                &subscriptions.rotate(caller, id, now_ms).await?,
            )),
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
    use crate::app::ports::Disabled;
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
}
