//! The audience routes at the edge, and a user's audiences: the request read, the
//! use case (`app::curate`) called, the audience shown as the contract shows it.

use super::answers::Success;
use super::{header, idempotency_key, page_of, Api, ApiError, Route, Trace};
use crate::app::accept::Accepted;
use crate::app::ports::{
    ApiKeys, Audience, Audiences, BuildQueue, Counters, DeliveryLog, IdempotencyKeys, Memberships,
    ReplayTasks, UpsertQueue, Users, Webhooks,
};
use crate::app::Caller;
use crate::contract::{checked_body, parse_audience, Paged, RequestError, UPSERT_BODY};
use crate::domain::audience::is_audience_id;
use crate::domain::format_millis;
use crate::domain::Stamp;
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
    /// The audience routes, and a user's audiences.
    pub(super) async fn audiences(
        &self,
        route: &Route,
        request: &Request,
        caller: &Caller,
        stamp: Stamp,
        trace: &mut Trace,
    ) -> Result<Success, ApiError> {
        let headers = request.headers();
        let now_ms = stamp.accepted_at;
        let curate = &self.curate;
        Ok(match route {
            Route::PutAudience(id) => {
                // The same 32 KiB as an upsert: a rule of 50 conditions fits many times.
                let key = idempotency_key(header(headers, "idempotency-key"))?;
                let definition = if is_audience_id(id) {
                    let content_type = header(headers, header::CONTENT_TYPE);
                    checked_body(
                        content_type,
                        request.body().as_ref(),
                        &UPSERT_BODY,
                        parse_audience,
                    )
                } else {
                    Err(RequestError::InvalidAudienceId)
                };
                let replayed = curate
                    .define(caller, id, definition, key.as_deref(), stamp)
                    .await?;
                trace.replayed = replayed;
                Success::Defined {
                    audience_id: id.clone(),
                    replayed,
                }
            }
            Route::DeleteAudience(id) => {
                let key = idempotency_key(header(headers, "idempotency-key"))?;
                let replayed = curate.delete(caller, id, key.as_deref(), stamp).await?;
                trace.replayed = replayed;
                Success::Accepted(Accepted::One { replayed })
            }
            Route::GetAudience(id) => {
                let view = curate.get(caller, id, now_ms).await?;
                Success::Data(audience_view(view.audience, Some(view.members)))
            }
            Route::ListAudiences => {
                let page = page_of(request, Paged::Audiences);
                let listed = curate.list(caller, page, now_ms).await?;
                Success::Page {
                    data: listed
                        .audiences
                        .into_iter()
                        .map(|a| audience_view(a, None))
                        .collect(),
                    next_cursor: listed.next_cursor,
                }
            }
            Route::AudienceMembers(id) => {
                let page = page_of(request, Paged::Members { audience_id: id });
                let members = curate.members(caller, id, page, now_ms).await?;
                Success::Page {
                    data: entries("external_user_id", members.members),
                    next_cursor: members.next_cursor,
                }
            }
            Route::UserAudiences(id) => Success::Data(entries(
                "audience_id",
                curate.of_user(caller, id, now_ms).await?,
            )),
            _ => unreachable!("the other routes are served above"),
        })
    }
}

/// An audience as reads show it (contract, "Audiences"); the list leaves the count out.
pub fn audience_view(audience: Audience, members: Option<u64>) -> Value {
    let mut shown = json!({
        "audience_id": audience.audience_id,
        "name": audience.name,
        "rule": audience.rule_json,
        "status": if audience.building.is_some() { "building" } else { "ready" },
        "updated_at": format_millis(audience.updated_at),
    });
    if let Some(members) = members {
        shown["members"] = json!(members);
    }
    if let Some(scanned) = audience.building {
        shown["build"] = json!({ "scanned": scanned });
    }
    shown
}

/// `[{<id_name>: …, "entered_at": …}]`: members of an audience, or a user's audiences.
pub fn entries(id_name: &str, entries: Vec<(String, i64)>) -> Value {
    entries
        .into_iter()
        .map(|(id, at)| json!({ id_name: id, "entered_at": format_millis(at) }))
        .collect()
}
