use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A profile field with its own attribute in the users table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileField {
    Email,
    Name,
    Plan,
    SignupDate,
    Company,
    Role,
}

impl ProfileField {
    pub const ALL: [ProfileField; 6] = [
        ProfileField::Email,
        ProfileField::Name,
        ProfileField::Plan,
        ProfileField::SignupDate,
        ProfileField::Company,
        ProfileField::Role,
    ];

    /// The users-table attribute (and message key) of this field.
    pub fn attribute(self) -> &'static str {
        match self {
            ProfileField::Email => "email",
            ProfileField::Name => "name",
            ProfileField::Plan => "plan",
            ProfileField::SignupDate => "signup_date",
            ProfileField::Company => "company",
            ProfileField::Role => "role",
        }
    }

    /// The member name under `traits` in requests and responses; email has none.
    pub fn trait_name(self) -> Option<&'static str> {
        match self {
            ProfileField::Email => None,
            ProfileField::Name => Some("name"),
            ProfileField::Plan => Some("plan"),
            ProfileField::SignupDate => Some("signupDate"),
            ProfileField::Company => Some("company"),
            ProfileField::Role => Some("role"),
        }
    }

    pub fn from_attribute(attribute: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.attribute() == attribute)
    }

    pub fn from_trait_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.trait_name() == Some(name))
    }
}

/// The path of a custom trait, in error fields (`traits.color`) and as the key of its
/// stamp in a stored profile.
pub fn trait_path(name: &str) -> String {
    format!("{TRAITS_PREFIX}{name}")
}

/// What stands before a custom trait's name in its path.
pub const TRAITS_PREFIX: &str = "traits.";

/// The name of the custom trait a path names, if it names one.
pub fn trait_of_path(path: &str) -> Option<&str> {
    path.strip_prefix(TRAITS_PREFIX)
}

/// What one upsert changes: `Some` sets a field, `None` removes it; absent fields are
/// left alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profile: BTreeMap<ProfileField, Option<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, Option<Value>>,
}

/// When an upsert was accepted; the total order that decides which write wins.
/// Field order matters: `accepted_at` first, the request id breaks ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub accepted_at: i64,
    pub request_id: String,
}

pub const MESSAGE_VERSION: u32 = 1;

/// The SQS message body of an accepted upsert, or of an erasure (`erase`, no changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpsertMessage {
    pub version: u32,
    pub workspace_id: String,
    pub external_user_id: String,
    pub stamp: Stamp,
    pub changes: Changes,
    /// Erase the user (`DELETE`): absent in upserts, so their messages are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erase: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not a valid upsert: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message version {0} is not supported (expected {MESSAGE_VERSION})")]
    UnsupportedVersion(u32),
}

impl UpsertMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an upsert message always serialises")
    }

    pub fn from_json(body: &str) -> Result<Self, MessageError> {
        let message: Self = serde_json::from_str(body)?;
        if message.version != MESSAGE_VERSION {
            return Err(MessageError::UnsupportedVersion(message.version));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_round_trips_with_removals() {
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("jane@acme.io".into()));
        changes.profile.insert(ProfileField::Plan, None);
        changes
            .traits
            .insert("color".into(), Some(json!({"a": [1, 2.5]})));
        changes.traits.insert("gone".into(), None);
        let message = UpsertMessage {
            version: MESSAGE_VERSION,
            workspace_id: "ws".into(),
            external_user_id: "usr_42".into(),
            stamp: Stamp {
                accepted_at: 1_700_000_000_000,
                request_id: "r1".into(),
            },
            changes,
            erase: false,
        };
        assert_eq!(
            UpsertMessage::from_json(&message.to_json()).unwrap(),
            message
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let body = r#"{"version":9,"workspace_id":"w","external_user_id":"u","stamp":{"accepted_at":1,"request_id":"r"},"changes":{}}"#;
        assert!(matches!(
            UpsertMessage::from_json(body),
            Err(MessageError::UnsupportedVersion(9))
        ));
    }
}
