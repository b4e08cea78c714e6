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

/// The version of [`UpsertMessage`]'s format; a consumer refuses other versions.
pub const MESSAGE_VERSION: u32 = 1;

/// An accepted upsert, or an erasure (`erase`, no changes), as it travels to the
/// consumer.
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
