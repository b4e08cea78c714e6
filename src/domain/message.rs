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
/// left alone. The `once_` maps hold `set_once`: each value is set only if the user has
/// none for that field at the upsert's place in stamp order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profile: BTreeMap<ProfileField, Option<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, Option<Value>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub once_profile: BTreeMap<ProfileField, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub once_traits: BTreeMap<String, Value>,
}

/// The total order that decides which write wins (contract, "What the consumer must
/// guarantee"): the time the change happened at the source (`timestamp`) if the
/// upsert gave one, else its acceptance; then the acceptance; then the request id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    /// The upsert's `timestamp` (epoch ms) when it gave one other than its acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    pub accepted_at: i64,
    pub request_id: String,
}

impl Stamp {
    /// A write stamped at its acceptance.
    pub fn new(accepted_at: i64, request_id: impl Into<String>) -> Self {
        Self {
            timestamp: None,
            accepted_at,
            request_id: request_id.into(),
        }
    }

    /// The same write, ordered by the time it happened at the source.
    pub fn at_source(mut self, timestamp: Option<i64>) -> Self {
        self.timestamp = timestamp.filter(|&t| t != self.accepted_at);
        self
    }

    /// The time that orders this write: the source's, else the acceptance.
    pub fn at(&self) -> i64 {
        self.timestamp.unwrap_or(self.accepted_at)
    }

    fn key(&self) -> (i64, i64, &str) {
        (self.at(), self.accepted_at, &self.request_id)
    }
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Stamp {}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for Stamp {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// The newest format of [`UpsertMessage`] a consumer reads (it refuses newer ones, so
/// they wait in the queue until it is deployed): 2 added the stamp's `timestamp` and
/// `set_once`. A message that uses neither is written as version 1, which consumers
/// deployed before version 2 still read.
pub const MESSAGE_VERSION: u32 = 2;

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

impl UpsertMessage {
    /// An accepted write, in the oldest format that carries it.
    pub fn new(
        workspace_id: &str,
        external_user_id: String,
        stamp: Stamp,
        changes: Changes,
        erase: bool,
    ) -> Self {
        let needs_v2 = stamp.timestamp.is_some()
            || !changes.once_profile.is_empty()
            || !changes.once_traits.is_empty();
        Self {
            version: if needs_v2 { 2 } else { 1 },
            workspace_id: workspace_id.to_owned(),
            external_user_id,
            stamp,
            changes,
            erase,
        }
    }
}
