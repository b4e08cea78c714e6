//! The users table's stream as Lambda delivers it: records in DynamoDB JSON, with the
//! item's old and new images, read into the same `StoredUser` the store reads.

use super::users::stored_user;
use super::Item;
use crate::store::StoredUser;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A DynamoDB stream event (only what the changes function reads).
#[derive(Debug, Deserialize)]
pub struct StreamEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamRecord>,
}

#[derive(Debug, Deserialize)]
pub struct StreamRecord {
    pub dynamodb: StreamData,
}

#[derive(Debug, Deserialize)]
pub struct StreamData {
    #[serde(rename = "SequenceNumber")]
    pub sequence_number: String,
    #[serde(rename = "OldImage")]
    pub old_image: Option<Map<String, Value>>,
    #[serde(rename = "NewImage")]
    pub new_image: Option<Map<String, Value>>,
}

/// One side of a record: the workspace and the user the image holds.
pub type UserImage = Option<(String, StoredUser)>;

impl StreamRecord {
    /// The old and new users of this record; an image that is not a user item is an
    /// error (a poison record).
    pub fn users(&self) -> Result<(UserImage, UserImage), String> {
        let read = |image: &Option<Map<String, Value>>| -> Result<UserImage, String> {
            image
                .as_ref()
                .map(|image| {
                    let item = item(image)?;
                    stored_user(&item).ok_or_else(|| "the image is not a user item".to_owned())
                })
                .transpose()
        };
        Ok((
            read(&self.dynamodb.old_image)?,
            read(&self.dynamodb.new_image)?,
        ))
    }
}

/// What the function answers: the first record it could not publish, from which the
/// event source mapping retries (the records before it are done).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct StreamBatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<StreamItemFailure>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StreamItemFailure {
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

fn item(image: &Map<String, Value>) -> Result<Item, String> {
    image
        .iter()
        .map(|(name, value)| Ok((name.clone(), attribute(value)?)))
        .collect()
}

/// One attribute in DynamoDB JSON (`{"S": "…"}`, `{"M": {…}}`, …). The users table
/// holds no binary attributes.
fn attribute(value: &Value) -> Result<AttributeValue, String> {
    let Some((kind, inner)) = value
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Err(format!("not a DynamoDB attribute: {value}"));
    };
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{kind} needs a string"))
    };
    let texts = |v: &Value| -> Result<Vec<String>, String> {
        v.as_array()
            .ok_or_else(|| format!("{kind} needs a list"))?
            .iter()
            .map(text)
            .collect()
    };
    Ok(match kind.as_str() {
        "S" => AttributeValue::S(text(inner)?),
        "N" => AttributeValue::N(text(inner)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or("BOOL needs a boolean")?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(texts(inner)?),
        "NS" => AttributeValue::Ns(texts(inner)?),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or("L needs a list")?
                .iter()
                .map(attribute)
                .collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(item(inner.as_object().ok_or("M needs a map")?)?),
        other => return Err(format!("unsupported attribute type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_read_into_users_and_garbage_is_an_error() {
        let record: StreamRecord = serde_json::from_value(json!({"dynamodb": {
            "SequenceNumber": "100",
            "NewImage": {
                "pk": {"S": "ws#u1"}, "workspace_id": {"S": "ws"}, "external_user_id": {"S": "u1"},
                "plan": {"S": "pro"}, "traits": {"M": {"tags": {"L": [{"S": "a"}, {"N": "2"}, {"NULL": true}, {"BOOL": false}]}}},
                "stamps": {"M": {"plan": {"S": "5/r1"}}}, "version": {"N": "3"}, "created_at": {"N": "5"}, "updated_at": {"N": "5"}
            }
        }}))
        .unwrap();
        let (old, new) = record.users().unwrap();
        assert!(old.is_none());
        let (workspace, user) = new.unwrap();
        assert_eq!(
            (
                workspace.as_str(),
                user.external_user_id.as_str(),
                user.version
            ),
            ("ws", "u1", 3)
        );
        assert_eq!(user.profile.traits["tags"], json!(["a", 2, null, false]));

        for image in [
            json!({"pk": {"S": "ws#u1"}}),
            json!({"pk": {"B": "AAEC"}}),
            json!({"pk": "plain"}),
        ] {
            let record: StreamRecord = serde_json::from_value(
                json!({"dynamodb": {"SequenceNumber": "1", "NewImage": image}}),
            )
            .unwrap();
            assert!(record.users().is_err(), "{image}");
        }
    }
}
