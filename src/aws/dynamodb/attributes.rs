//! JSON values ⇄ DynamoDB attribute values. Numbers travel as their decimal text both
//! ways (the API only accepts numbers a double or a 64-bit integer holds exactly), and
//! reading never fails: whatever an item holds comes back as some JSON value, so a
//! read of anything stored answers 200.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Map, Number, Value};

pub(crate) fn to_attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(number) => AttributeValue::N(number.to_string()),
        Value::String(text) => AttributeValue::S(text.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect()),
        Value::Object(members) => AttributeValue::M(
            members
                .iter()
                .map(|(name, member)| (name.clone(), to_attribute(member)))
                .collect(),
        ),
    }
}

pub(crate) fn from_attribute(attribute: &AttributeValue) -> Value {
    match attribute {
        AttributeValue::S(text) => Value::String(text.clone()),
        AttributeValue::N(text) => number(text),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(members) => Value::Object(
            members
                .iter()
                .map(|(name, member)| (name.clone(), from_attribute(member)))
                .collect::<Map<_, _>>(),
        ),
        AttributeValue::Ss(texts) => texts.iter().cloned().map(Value::String).collect(),
        AttributeValue::Ns(texts) => texts.iter().map(|text| number(text)).collect(),
        AttributeValue::B(blob) => blob_text(blob),
        AttributeValue::Bs(blobs) => blobs.iter().map(blob_text).collect(),
        _ => Value::Null,
    }
}

/// A DynamoDB number as JSON: an integer when it is one, else a double; text that is
/// neither (never written by this service) stays readable as a string.
fn number(text: &str) -> Value {
    if let Ok(integer) = text.parse::<i64>() {
        return Value::from(integer);
    }
    if let Ok(integer) = text.parse::<u64>() {
        return Value::from(integer);
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or_else(|| Value::String(text.to_owned()), Value::Number)
}

fn blob_text(blob: &Blob) -> Value {
    Value::String(String::from_utf8_lossy(blob.as_ref()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_exactly() {
        let value = json!({
            "edges": [u64::MAX, i64::MIN, 9.5e125, -1e-130, 0.1, 0, "", [], {}],
            "unicode": "żółw 🐢", "nested": {"a": [null, true, {"b": 1.5}]}
        });
        assert_eq!(from_attribute(&to_attribute(&value)), value);
    }

    #[test]
    fn foreign_shapes_stay_readable() {
        assert_eq!(
            from_attribute(&AttributeValue::Ns(vec!["1".into(), "2.5".into()])),
            json!([1, 2.5])
        );
        assert_eq!(
            from_attribute(&AttributeValue::N("1e999".into())),
            json!("1e999")
        );
    }
}
