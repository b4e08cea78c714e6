//! What a profile may hold. A user is one DynamoDB item (at most 400 KB), so custom
//! traits share a budget and the bookkeeping that keeps merges order-proof is bounded.
//! Sizes are counted as DynamoDB counts item size (names + values).

use super::Stamp;
use serde_json::Value;

/// Custom traits of one user: names + values + each one's stamp, in DynamoDB bytes.
/// Known traits, email, ids, the bounded bookkeeping below and the rest of the item
/// fit in the remaining ~140 KB of the 400 KB item with room to spare.
pub const TRAITS_BUDGET_BYTES: usize = 256 * 1024;
/// `rejected_traits` keeps the most recent entries only.
pub const MAX_REJECTED_TRAITS: usize = 16;
/// Stamps of removed custom traits kept per user; older ones fold into the floor.
pub const MAX_REMOVED_STAMPS: usize = 64;
/// `set_once` writes kept per field that are not (or not yet) its value: the earliest
/// ones. A removal stamped after all of them that arrives late finds the field empty
/// even if a later `set_once`, not kept, would have set it in stamp order.
pub const MAX_PENDING_ONCE: usize = 4;

/// The DynamoDB size of a JSON value stored as an attribute value: strings by their
/// UTF-8 bytes, numbers by ~1 byte per two significant digits + 1, booleans and null
/// 1, lists and maps 3 + 1 per element (+ the member name for maps).
pub fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 1,
        Value::Number(number) => {
            let text = number.to_string();
            let digits = text
                .split(['e', 'E'])
                .next()
                .unwrap_or_default()
                .bytes()
                .filter(u8::is_ascii_digit)
                .count();
            digits.div_ceil(2) + 1
        }
        Value::String(text) => text.len(),
        Value::Array(items) => 3 + items.iter().map(|item| 1 + value_size(item)).sum::<usize>(),
        Value::Object(members) => {
            3 + members
                .iter()
                .map(|(name, member)| 1 + name.len() + value_size(member))
                .sum::<usize>()
        }
    }
}

/// The stamp's stored form: `accepted_at/request_id`, or `timestamp~accepted_at/…`
/// for a write stamped at the source.
pub fn stamp_text(stamp: &Stamp) -> String {
    match stamp.timestamp {
        None => format!("{}/{}", stamp.accepted_at, stamp.request_id),
        Some(at) => format!("{at}~{}/{}", stamp.accepted_at, stamp.request_id),
    }
}

/// A stamp from its stored form.
pub fn parse_stamp(text: &str) -> Option<Stamp> {
    let (times, request_id) = text.split_once('/')?;
    let (timestamp, accepted_at) = match times.split_once('~') {
        Some((at, accepted)) => (Some(at.parse().ok()?), accepted),
        None => (None, times),
    };
    Some(Stamp::new(accepted_at.parse().ok()?, request_id).at_source(timestamp))
}

/// What one custom trait costs against the budget: its member of the traits map and
/// its member of the stamps map.
pub fn trait_cost(name: &str, value: &Value, stamp: &Stamp) -> usize {
    let in_traits = 1 + name.len() + value_size(value);
    let in_stamps = 1 + super::trait_path(name).len() + stamp_text(stamp).len();
    in_traits + in_stamps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        assert_eq!(value_size(&json!("héllo")), 6);
        assert_eq!(value_size(&json!(12345)), 4);
        assert_eq!(value_size(&json!(true)), 1);
        assert_eq!(value_size(&json!([1, "ab"])), 3 + (1 + 2) + (1 + 2));
        assert_eq!(value_size(&json!({"k": null})), 3 + 1 + 1 + 1);
    }
}
