//! How a Segment identify maps onto the body of `POST /api/v1/users` (`segment`'s
//! "Mapping"): its traits, and those only in `context.traits`, onto ours; its source
//! time, corrected for the sender's clock; and our fields named back as the message
//! named them, for its errors.

use serde_json::{Map, Value};
use std::collections::HashSet;

/// A message as the members of our upsert body, and how to name our fields as the
/// message named them.
pub(super) struct Upsert {
    pub(super) members: Map<String, Value>,
    pub(super) names: Names,
}

/// Which of our traits came from where in the message.
#[derive(Default)]
pub(super) struct Names {
    /// Traits renamed on the way (ours → the message's).
    renamed: Vec<(&'static str, &'static str)>,
    /// Traits the message gave in `context.traits` only (RudderStack's libraries put
    /// an identify's traits there).
    from_context: HashSet<String>,
    /// The source time came from `originalTimestamp` (RudderStack's Node library).
    original_timestamp: bool,
}

impl Upsert {
    pub(super) fn of(
        user_id: String,
        mut message: Map<String, Value>,
        sent_at: Option<i64>,
        now_ms: i64,
    ) -> Upsert {
        let mut names = Names::default();
        // `traits` wins over `context.traits` member by member.
        let mut traits = match message.get_mut("context").and_then(|c| c.get_mut("traits")) {
            Some(Value::Object(context)) => std::mem::take(context),
            _ => Map::new(),
        };
        names.from_context = traits.keys().cloned().collect();
        if let Some(Value::Object(given)) = message.remove("traits") {
            for (name, value) in given {
                names.from_context.remove(&name);
                traits.insert(name, value);
            }
        }
        let mut members = Map::new();
        members.insert("external_user_id".into(), Value::String(user_id));
        if let Some(email) = traits.remove("email") {
            members.insert("email".into(), email);
        }
        names.map_traits(&mut traits);
        if !traits.is_empty() {
            members.insert("traits".into(), Value::Object(traits));
        }
        // RudderStack's Node library sends `originalTimestamp` instead.
        let timestamp = message.remove("timestamp").or_else(|| {
            names.original_timestamp = message.contains_key("originalTimestamp");
            message.remove("originalTimestamp")
        });
        if let Some(timestamp) = timestamp {
            members.insert("timestamp".into(), source_time(timestamp, sent_at, now_ms));
        }
        Upsert { members, names }
    }
}

impl Names {
    /// Segment's reserved traits onto ours.
    fn map_traits(&mut self, traits: &mut Map<String, Value>) {
        let mut rename = |traits: &mut Map<String, Value>, from: &'static str, to: &'static str| {
            if !traits.contains_key(to) {
                if let Some(value) = traits.remove(from) {
                    traits.insert(to.to_owned(), value);
                    self.renamed.push((to, from));
                }
            }
        };
        // A date that is not a date-time (`2024-05-01`, or one without an offset) stays
        // the custom trait `createdAt` rather than drop the message.
        if traits
            .get("createdAt")
            .is_some_and(|v| instant_ms(v).is_some())
        {
            rename(traits, "createdAt", "signupDate");
        }
        rename(traits, "title", "role");
        if let Some(Value::Object(mut company)) = traits.remove("company") {
            if let Some(name) = company.remove("name") {
                traits.insert("company".into(), name);
                self.renamed.push(("company", "company.name"));
            }
            if !company.is_empty() {
                traits.insert("companyDetails".into(), Value::Object(company));
                self.renamed.push(("companyDetails", "company"));
            }
        }
        if !traits.contains_key("name") {
            let part = |key| traits.get(key).and_then(Value::as_str).map(str::to_owned);
            let full: Vec<String> = [part("firstName"), part("lastName")]
                .into_iter()
                .flatten()
                .collect();
            if !full.is_empty() {
                traits.insert("name".into(), Value::String(full.join(" ")));
            }
        }
    }

    /// A field of our body as the message names it.
    pub(super) fn field(&self, ours: &str) -> String {
        let traits = |name: &str| {
            let head = name.split(['.', '[']).next().unwrap_or(name);
            if self.from_context.contains(head) {
                format!("context.traits.{name}")
            } else {
                format!("traits.{name}")
            }
        };
        match ours {
            "external_user_id" => "userId".into(),
            "email" => traits("email"),
            "timestamp" if self.original_timestamp => "originalTimestamp".into(),
            _ => match ours.strip_prefix("traits.") {
                Some(name) => {
                    let (head, rest) = name
                        .split_once(['.', '['])
                        .map_or((name, ""), |(h, _)| (h, &name[h.len()..]));
                    match self.renamed.iter().find(|(to, _)| *to == head) {
                        Some((_, from)) => traits(&format!("{from}{rest}")),
                        None => traits(name),
                    }
                }
                None => ours.to_owned(),
            },
        }
    }
}

/// A message's `timestamp` as the source time of its upsert, corrected for the
/// sender's clock by `sentAt` as Segment does (the time between the event and the
/// send, counted back from the arrival) — but never later than the sender said: a
/// retry that resends an old `sentAt` would otherwise move its source time to now,
/// past writes that really came after it.
fn source_time(timestamp: Value, sent_at: Option<i64>, now_ms: i64) -> Value {
    match (instant_ms(&timestamp), sent_at) {
        (Some(at), Some(sent)) => {
            let corrected = now_ms.saturating_sub(sent.saturating_sub(at));
            if corrected < at {
                return Value::String(format_ms(corrected));
            }
            timestamp
        }
        _ => timestamp,
    }
}

/// An RFC 3339 date-time, in ms since the epoch.
pub(super) fn instant_ms(value: &Value) -> Option<i64> {
    value.as_str().and_then(crate::domain::audience::instant_ms)
}

fn format_ms(ms: i64) -> String {
    crate::domain::format_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_segment_batch;
    use crate::contract::segment::tests::{batch, NOW};
    use crate::domain::ProfileField;
    use serde_json::json;

    #[test]
    fn an_identify_maps_onto_an_upsert() {
        let parsed = batch(json!([{
            "type": "identify", "userId": "u1", "messageId": "m1",
            "traits": {"email": "Jane@Acme.io", "createdAt": "2026-05-17T16:00:00+02:00",
                       "company": {"name": "Acme", "id": 7}, "title": "CTO",
                       "firstName": "Jane", "lastName": "Doe", "favoriteColor": "teal"},
            "context": {"library": {"name": "x"}}, "integrations": {}, "anonymousId": "a1"
        }]));
        assert_eq!(parsed.message_ids, [Some("m1".to_owned())]);
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert_eq!(upsert.external_user_id, "u1");
        let profile = &upsert.changes.profile;
        assert_eq!(
            profile[&ProfileField::Email].as_deref(),
            Some("Jane@Acme.io")
        );
        assert_eq!(
            profile[&ProfileField::SignupDate].as_deref(),
            Some("2026-05-17T14:00:00Z")
        );
        assert_eq!(profile[&ProfileField::Company].as_deref(), Some("Acme"));
        assert_eq!(profile[&ProfileField::Role].as_deref(), Some("CTO"));
        assert_eq!(profile[&ProfileField::Name].as_deref(), Some("Jane Doe"));
        let traits = &upsert.changes.traits;
        assert_eq!(traits["companyDetails"], Some(json!({"id": 7})));
        assert_eq!(traits["favoriteColor"], Some(json!("teal")));
        assert!(!traits.contains_key("anonymousId") && !traits.contains_key("context"));
    }

    #[test]
    fn a_created_at_that_is_no_date_time_stays_a_custom_trait() {
        let parsed = batch(
            json!([{"type": "identify", "userId": "u1", "traits": {"createdAt": "2024-05-01"}}]),
        );
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert!(upsert.changes.profile.is_empty());
        assert_eq!(
            upsert.changes.traits["createdAt"],
            Some(json!("2024-05-01"))
        );
    }

    #[test]
    fn the_senders_clock_is_corrected_by_sent_at() {
        // The sender's clock runs an hour ahead: its event happened 2 s before it sent.
        let ahead = 3_600_000;
        let body = json!({"sentAt": format_ms(NOW + ahead), "batch": [
            {"type": "identify", "userId": "u1", "timestamp": format_ms(NOW + ahead - 2_000)}
        ]});
        let parsed = parse_segment_batch(body.to_string().as_bytes(), NOW).unwrap();
        let upsert = parsed.batch.entries[0].as_ref().unwrap();
        assert_eq!(upsert.timestamp, Some(NOW - 2_000));
    }

    #[test]
    fn traits_in_context_are_an_identifys_traits_as_rudderstack_sends_them() {
        // rudder-sdk-python: the traits only in context.traits; rudder-sdk-node: both.
        let parsed = batch(json!([
            {"type": "identify", "userId": "u1",
             "context": {"traits": {"email": "a@b.io", "plan": "pro", "title": 7}, "library": {"name": "x"}}},
            {"type": "identify", "userId": "u2",
             "traits": {"plan": "team"},
             "context": {"traits": {"plan": "old", "seats": 3, "company": {"name": "Acme"}}}},
        ]));
        let refused = parsed.batch.entries[0].as_ref().unwrap_err();
        assert_eq!(refused[0].field.as_deref(), Some("context.traits.title"));
        assert!(
            refused[0].message.starts_with("context.traits.title "),
            "{}",
            refused[0].message
        );
        let both = parsed.batch.entries[1].as_ref().unwrap();
        assert_eq!(
            both.changes.profile[&ProfileField::Plan].as_deref(),
            Some("team")
        );
        assert_eq!(
            both.changes.profile[&ProfileField::Company].as_deref(),
            Some("Acme")
        );
        assert_eq!(both.changes.traits["seats"], Some(json!(3)));
        let only = batch(json!([{"type": "identify", "userId": "u1",
            "context": {"traits": {"email": "a@b.io", "plan": "pro"}}}]));
        let upsert = only.batch.entries[0].as_ref().unwrap();
        assert_eq!(
            upsert.changes.profile[&ProfileField::Email].as_deref(),
            Some("a@b.io")
        );
        assert_eq!(
            upsert.changes.profile[&ProfileField::Plan].as_deref(),
            Some("pro")
        );
    }

    #[test]
    fn original_timestamp_is_the_source_time_when_there_is_no_timestamp() {
        let event = NOW - 2_000;
        let parsed = batch(json!([
            {"type": "identify", "userId": "u1", "originalTimestamp": format_ms(event),
             "sentAt": format_ms(event + 500)},
            {"type": "identify", "userId": "u2", "originalTimestamp": format_ms(event - 1),
             "timestamp": format_ms(event)},
        ]));
        let times: Vec<Option<i64>> = parsed
            .batch
            .entries
            .iter()
            .map(|e| e.as_ref().unwrap().timestamp)
            .collect();
        assert_eq!(times, [Some(event), Some(event)]);
        // A bad one is named as the message named it.
        let late =
            batch(json!([{"type": "identify", "userId": "u1", "originalTimestamp": "soon"}]));
        let refused = late.batch.entries[0].as_ref().unwrap_err();
        assert_eq!(refused[0].field.as_deref(), Some("originalTimestamp"));
        assert!(
            refused[0].message.starts_with("originalTimestamp "),
            "{}",
            refused[0].message
        );
    }

    #[test]
    fn a_stale_sent_at_never_moves_a_source_time_later() {
        // A retry that resends the batch of an hour ago, its sentAt unchanged.
        let event = NOW - 3_600_000;
        let body = json!({"sentAt": format_ms(event + 500), "batch": [
            {"type": "identify", "userId": "u1", "timestamp": format_ms(event)}
        ]});
        let parsed = parse_segment_batch(body.to_string().as_bytes(), NOW).unwrap();
        assert_eq!(
            parsed.batch.entries[0].as_ref().unwrap().timestamp,
            Some(event)
        );
    }
}
