//! An endpoint as the webhooks table stores it, and back.

use super::{WebhookStore, ENDPOINT_PREFIX, SORT_KEY};
use crate::app::ports::{Disabled, Endpoint};
use crate::aws::dynamodb::{get_n, get_s, n, s, Item};
use crate::domain::webhook::{DisabledReason, EventType, Secret};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::BTreeSet;

pub(super) fn list(ids: &BTreeSet<String>) -> AttributeValue {
    AttributeValue::L(ids.iter().map(s).collect())
}

pub(super) fn events_attribute(events: &BTreeSet<EventType>) -> AttributeValue {
    AttributeValue::L(events.iter().map(|event| s(event.as_str())).collect())
}

pub(super) fn endpoint_item(workspace_id: &str, endpoint: &Endpoint) -> Item {
    let mut item = WebhookStore::endpoint_key(workspace_id, &endpoint.webhook_id);
    item.extend([
        ("url".to_owned(), s(&endpoint.url)),
        ("events".to_owned(), events_attribute(&endpoint.events)),
        (
            "include_profile".to_owned(),
            AttributeValue::Bool(endpoint.include_profile),
        ),
        ("secret".to_owned(), s(&endpoint.secret.0)),
        ("created_at".to_owned(), n(endpoint.created_at)),
        ("updated_at".to_owned(), n(endpoint.updated_at)),
    ]);
    if let Some(audiences) = &endpoint.audiences {
        item.insert("audiences".to_owned(), list(audiences));
    }
    if let Some((secret, until)) = &endpoint.previous_secret {
        item.insert("previous_secret".to_owned(), s(&secret.0));
        item.insert("previous_until".to_owned(), n(until));
    }
    item
}

/// Strings of a list attribute (anything else in it skipped).
fn strings<'a>(item: &'a Item, name: &str) -> Option<impl Iterator<Item = &'a str> + 'a> {
    let values = item.get(name)?.as_l().ok()?;
    Some(
        values
            .iter()
            .filter_map(|v| v.as_s().ok())
            .map(String::as_str),
    )
}

pub(super) fn endpoint_from_item(item: &Item) -> Option<Endpoint> {
    let previous_secret = get_s(item, "previous_secret")
        .zip(get_n(item, "previous_until"))
        .map(|(secret, until)| (Secret(secret.to_owned()), until));
    Some(Endpoint {
        webhook_id: get_s(item, SORT_KEY)?
            .strip_prefix(ENDPOINT_PREFIX)?
            .to_owned(),
        url: get_s(item, "url")?.to_owned(),
        events: strings(item, "events")?
            .filter_map(EventType::parse)
            .collect(),
        audiences: strings(item, "audiences").map(|ids| ids.map(str::to_owned).collect()),
        include_profile: item
            .get("include_profile")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        secret: Secret(get_s(item, "secret")?.to_owned()),
        previous_secret,
        created_at: get_n(item, "created_at")?,
        updated_at: get_n(item, "updated_at")?,
        failing_since: get_n(item, "failing_since"),
        disabled: get_s(item, "disabled_reason")
            .and_then(DisabledReason::parse)
            .zip(get_n(item, "disabled_at"))
            .map(|(reason, at)| Disabled {
                reason,
                at,
                announced: item.contains_key("disabled_announced"),
            }),
    })
}
