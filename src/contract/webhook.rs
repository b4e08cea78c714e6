//! Webhook requests: the endpoint a `PUT /api/v1/webhooks/{id}` subscribes.

use super::json::{in_body_order, read_object, ReadObject};
use super::{body_hash, BodyError, ErrorCode, FieldError};
use crate::domain::audience::{
    is_audience_id, AUDIENCE_ENTERED, AUDIENCE_EXITED, AUDIENCE_ID_RULE,
};
use crate::domain::change::{USER_CHANGED, USER_DELETED};
use crate::domain::format_millis;
use crate::domain::webhook::{address_allowed, DisabledReason, EventType, Reach};
use serde_json::Value;
use std::collections::BTreeSet;
use url::{Host, Url};

/// A target URL of at most 2,048 bytes.
pub const MAX_URL_BYTES: usize = 2_048;
/// At most this many audiences narrow a webhook's audience events.
pub const MAX_WEBHOOK_AUDIENCES: usize = 100;
/// What `include` may name: the user's profile, read at each attempt.
const INCLUDE_PROFILE: &str = "profile";

/// A valid `PUT /api/v1/webhooks/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDefinition {
    pub url: Url,
    /// In the order the wire lists them in `EventType::ALL`, each once.
    pub events: BTreeSet<EventType>,
    /// Only these audiences' events, when given.
    pub audiences: Option<BTreeSet<String>>,
    /// `"include": ["profile"]`: bodies carry the user's profile (a key with
    /// `users:read_pii` only; the use case checks the key).
    pub include_profile: bool,
    pub body_hash: String,
}

pub fn parse_webhook(body: &[u8], reach: Reach) -> Result<WebhookDefinition, BodyError> {
    let ReadObject {
        mut members, text, ..
    } = read_object(body)?;
    let body_hash = body_hash(&members);
    let mut errors: Vec<(String, FieldError)> =
        FieldError::unknown_members(members.keys(), &["url", "events", "audiences", "include"])
            .into_iter()
            .map(|error| (error.field.clone().unwrap_or_default(), error))
            .collect();
    let mut refuse = |code, path: String, message: String| {
        errors.push((path.clone(), FieldError::new(code, path, message)));
    };
    let url = match members.remove("url") {
        None | Some(Value::Null) => {
            refuse(ErrorCode::Required, "url".into(), "url is required".into());
            None
        }
        Some(Value::String(url)) => match target(&url, reach) {
            Ok(url) => Some(url),
            Err((code, message)) => {
                refuse(code, "url".into(), message);
                None
            }
        },
        Some(_) => {
            refuse(
                ErrorCode::InvalidType,
                "url".into(),
                "url must be a string".into(),
            );
            None
        }
    };
    let events_value = members.remove("events");
    let listed = matches!(events_value, Some(Value::Array(_)));
    let events = match strings(events_value, "events", &mut refuse) {
        None => {
            refuse(
                ErrorCode::Required,
                "events".into(),
                "events is required".into(),
            );
            None
        }
        // Not an array: refused as such already.
        Some(_) if !listed => None,
        Some(names) if names.is_empty() => {
            refuse(
                ErrorCode::Empty,
                "events".into(),
                "events must name at least one event".into(),
            );
            None
        }
        Some(names) => {
            let mut events = BTreeSet::new();
            for (i, name) in names {
                match EventType::parse(&name) {
                    Some(event) => {
                        events.insert(event);
                    }
                    None => refuse(
                        ErrorCode::InvalidFormat,
                        format!("events[{i}]"),
                        format!("events[{i}] is not one of {}", event_names()),
                    ),
                }
            }
            Some(events)
        }
    };
    let audiences_value = members.remove("audiences");
    let none_listed = matches!(&audiences_value, Some(Value::Array(ids)) if ids.is_empty());
    let audiences = strings(audiences_value, "audiences", &mut refuse).map(|ids| {
        if none_listed {
            refuse(
                ErrorCode::Empty,
                "audiences".into(),
                "audiences names at least one audience (leave it out for all of them)".into(),
            );
        }
        if ids.len() > MAX_WEBHOOK_AUDIENCES {
            refuse(
                ErrorCode::TooMany,
                "audiences".into(),
                format!("audiences names at most {MAX_WEBHOOK_AUDIENCES} audiences"),
            );
        }
        let mut audiences = BTreeSet::new();
        for (i, id) in ids {
            if is_audience_id(&id) {
                audiences.insert(id);
            } else {
                refuse(
                    ErrorCode::InvalidFormat,
                    format!("audiences[{i}]"),
                    AUDIENCE_ID_RULE.into(),
                );
            }
        }
        audiences
    });
    let include = strings(members.remove("include"), "include", &mut refuse).unwrap_or_default();
    for (i, name) in &include {
        if name != INCLUDE_PROFILE {
            refuse(
                ErrorCode::InvalidFormat,
                format!("include[{i}]"),
                format!("include[{i}] may only be \"{INCLUDE_PROFILE}\""),
            );
        }
    }
    match (url, events) {
        (Some(url), Some(events)) if errors.is_empty() => Ok(WebhookDefinition {
            url,
            events,
            audiences,
            include_profile: !include.is_empty(),
            body_hash,
        }),
        _ => Err(BodyError::Invalid(in_body_order(errors, &text))),
    }
}

/// An array of strings at `field`, with each one's index; `None` when absent or null.
fn strings(
    value: Option<Value>,
    field: &str,
    refuse: &mut impl FnMut(ErrorCode, String, String),
) -> Option<Vec<(usize, String)>> {
    match value? {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(text) => Some((i, text)),
                    _ => {
                        refuse(
                            ErrorCode::InvalidType,
                            format!("{field}[{i}]"),
                            format!("{field}[{i}] must be a string"),
                        );
                        None
                    }
                })
                .collect(),
        ),
        _ => {
            refuse(
                ErrorCode::InvalidType,
                field.into(),
                format!("{field} must be an array of strings"),
            );
            Some(Vec::new())
        }
    }
}

fn event_names() -> String {
    EventType::ALL.map(EventType::as_str).join(", ")
}

/// The target as the contract allows it: `https` (or `http` to loopback under the local
/// switch), no credentials, at most 2,048 bytes, and a literal address only outside the
/// refused ranges. A name is judged on each attempt, on the address it resolves to.
fn target(text: &str, reach: Reach) -> Result<Url, (ErrorCode, String)> {
    let not_allowed = |why: &str| (ErrorCode::InvalidFormat, format!("url {why}"));
    let too_long = || {
        (
            ErrorCode::TooLong,
            format!("url is over {MAX_URL_BYTES} bytes"),
        )
    };
    if text.len() > MAX_URL_BYTES {
        return Err(too_long());
    }
    let url = Url::parse(text).map_err(|_| not_allowed("is not an absolute URL"))?;
    // Stored and shown as WHATWG writes it, whose percent-encoding can lengthen it.
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(too_long());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(not_allowed("must not carry credentials"));
    }
    let address = match url.host() {
        None => return Err(not_allowed("has no host")),
        Some(Host::Ipv4(v4)) => Some(v4.into()),
        Some(Host::Ipv6(v6)) => Some(v6.into()),
        Some(Host::Domain(_)) => None,
    };
    if let Some(address) = address {
        if !address_allowed(address, reach) {
            return Err(not_allowed(
                "is a private, loopback, link-local or metadata address",
            ));
        }
    }
    let loopback = address.is_some_and(|address: std::net::IpAddr| address.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if reach == Reach::PublicAndLoopback && loopback => Ok(url),
        _ => Err(not_allowed("must be https")),
    }
}

/// What a bus event tells an endpoint: its type, whom and which audience it is about,
/// and its data **without PII** (contract, "Webhooks"): ids, versions, the stamp, the
/// *names* of changed fields, the audience and the reason; never an email or a value.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub event_type: EventType,
    /// The bus event's id: the `webhook-id` is made of it.
    pub event_id: String,
    pub workspace_id: String,
    /// Whose lane it goes in: [`ENDPOINT_LANE`] for an endpoint's own events.
    pub external_user_id: String,
    /// The audience of an audience event.
    pub audience_id: Option<String>,
    /// When it happened: a move's `at`, a write's source time or acceptance.
    pub timestamp: String,
    /// The user's version it is of (`version`, or a move's `user_version`): an
    /// endpoint gets a user's events in this order.
    pub user_version: u64,
    pub data: Value,
}

/// The webhook event of a bus event (`detail-type`, `detail`), or `None` for one no
/// endpoint subscribes to or that lacks what a delivery names.
pub fn webhook_event(detail_type: &str, detail: &Value) -> Option<WebhookEvent> {
    let text = |name: &str| detail.get(name)?.as_str().map(str::to_owned);
    let event_type = match detail_type {
        USER_CHANGED => EventType::UserChanged,
        USER_DELETED => EventType::UserDeleted,
        AUDIENCE_ENTERED => EventType::AudienceEntered,
        AUDIENCE_EXITED => EventType::AudienceExited,
        _ => return None,
    };
    let external_user_id = text("external_user_id")?;
    let mut data = serde_json::Map::new();
    data.insert("external_user_id".into(), external_user_id.clone().into());
    let (timestamp, audience_id) = match event_type {
        EventType::AudienceEntered | EventType::AudienceExited => {
            for name in ["audience_id", "user_version", "reason", "at"] {
                data.insert(name.into(), detail.get(name)?.clone());
            }
            (text("at")?, Some(text("audience_id")?))
        }
        _ => {
            let stamp = detail.get("stamp")?;
            data.insert("version".into(), detail.get("version")?.clone());
            data.insert("stamp".into(), stamp.clone());
            if let Some(changed) = detail.get("changed").and_then(Value::as_object) {
                let names: Vec<&String> = changed.keys().collect();
                data.insert("changed".into(), serde_json::json!(names));
            }
            let at = stamp.get("timestamp").or_else(|| stamp.get("accepted_at"));
            (at?.as_str()?.to_owned(), None)
        }
    };
    let user_version = user_version_in(detail)?;
    Some(WebhookEvent {
        event_type,
        event_id: text("id")?,
        user_version,
        workspace_id: text("workspace_id")?,
        external_user_id,
        audience_id,
        timestamp,
        data: Value::Object(data),
    })
}

/// The user's version an event's `detail` or a body's `data` is of: a write's
/// `version`, or a move's `user_version`.
fn user_version_in(value: &Value) -> Option<u64> {
    ["version", "user_version"]
        .iter()
        .find_map(|name| value.get(*name)?.as_u64())
}

/// The user's version a delivery body is of, which orders its lane; `None` for an
/// endpoint's own event (or a body that is not one).
pub fn delivery_order(body: &str) -> Option<u64> {
    let body: Value = serde_json::from_str(body).ok()?;
    user_version_in(body.get("data")?)
}

/// The lane of an endpoint's own events (`webhook.disabled`) on each endpoint that
/// takes them: no user's, as no user id is empty.
pub const ENDPOINT_LANE: &str = "";

/// `webhook.disabled` for the workspace's other endpoints: which endpoint, why and
/// when. Its id is the same however often the disabling is announced (a worker that
/// died before noting it announced), so receivers drop a repeat.
pub fn disabled_event(
    workspace_id: &str,
    webhook_id: &str,
    reason: DisabledReason,
    at_ms: i64,
) -> WebhookEvent {
    let at = format_millis(at_ms).unwrap_or_default();
    WebhookEvent {
        event_type: EventType::WebhookDisabled,
        event_id: format!("disabled_{webhook_id}_{at_ms}"),
        workspace_id: workspace_id.to_owned(),
        external_user_id: ENDPOINT_LANE.to_owned(),
        audience_id: None,
        timestamp: at.clone(),
        user_version: u64::try_from(at_ms).unwrap_or(0),
        data: serde_json::json!({
            "webhook_id": webhook_id,
            "reason": reason.as_str(),
            "disabled_at": at,
        }),
    }
}

/// A delivery's body, signed as sent (`docs/webhooks.md` §4): `data` as the event
/// gives it, the endpoint's id and the lane's `sequence` beside.
pub fn delivery_body(
    event_type: EventType,
    timestamp: &str,
    webhook_id: &str,
    sequence: u64,
    data: &Value,
) -> String {
    serde_json::json!({
        "type": event_type.as_str(),
        "timestamp": timestamp,
        "webhook_id": webhook_id,
        "sequence": sequence,
        "data": data,
    })
    .to_string()
}

/// A delivery body with the user's `profile` in `data.profile` (`include:
/// ["profile"]`); `None` if `body` is not one.
pub fn with_profile(body: &str, profile: Value) -> Option<String> {
    let mut body: Value = serde_json::from_str(body).ok()?;
    body.get_mut("data")?
        .as_object_mut()?
        .insert("profile".into(), profile);
    Some(body.to_string())
}

/// A delivery body given another `sequence` (a lane's deliveries arranged); `None` if
/// `body` is not one.
pub fn with_sequence(body: &str, sequence: u64) -> Option<String> {
    let mut body: Value = serde_json::from_str(body).ok()?;
    *body.as_object_mut()?.get_mut("sequence")? = sequence.into();
    Some(body.to_string())
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
