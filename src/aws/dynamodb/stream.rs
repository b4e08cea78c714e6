//! The users table's stream: the old and new item images of a record, as Lambda's
//! event carries them, read into the same users the store reads.

use super::users::stored_user;
use super::Item;
use crate::app::ports::UserImage;
use aws_lambda_events::dynamodb::StreamRecord;

/// A record whose image is not a user item: a poison record.
#[derive(Debug, thiserror::Error)]
#[error("the {0} image is not a user item")]
pub struct ImageError(&'static str);

/// The old and new users of a stream record.
pub fn stream_image(record: &StreamRecord) -> Result<(UserImage, UserImage), ImageError> {
    let read = |image: &serde_dynamo::Item, side| -> Result<UserImage, ImageError> {
        if image.is_empty() {
            return Ok(None);
        }
        let item: Item = image.clone().into();
        stored_user(&item).map(Some).ok_or(ImageError(side))
    };
    Ok((
        read(&record.old_image, "old")?,
        read(&record.new_image, "new")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_new_image(new_image: serde_json::Value) -> StreamRecord {
        serde_json::from_value(json!({
            "SequenceNumber": "100", "SizeBytes": 10, "NewImage": new_image
        }))
        .unwrap()
    }

    #[test]
    fn images_read_into_users_and_other_items_are_an_error() {
        let record = with_new_image(json!({
            "pk": {"S": "ws#u1"}, "workspace_id": {"S": "ws"}, "external_user_id": {"S": "u1"},
            "plan": {"S": "pro"}, "traits": {"M": {"tags": {"L": [{"S": "a"}, {"N": "2"}, {"NULL": true}, {"BOOL": false}]}}},
            "stamps": {"M": {"plan": {"S": "5/r1"}}}, "version": {"N": "3"}, "created_at": {"N": "5"}, "updated_at": {"N": "5"}
        }));
        let (old, new) = stream_image(&record).unwrap();
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

        for image in [json!({"pk": {"S": "ws#u1"}}), json!({"pk": {"B": "AAEC"}})] {
            assert!(
                stream_image(&with_new_image(image.clone())).is_err(),
                "{image}"
            );
        }
    }
}
