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
    #[error("a packed message holds no upsert")]
    Empty,
}

impl UpsertMessage {
    pub fn to_json(&self) -> String {
        let json = serde_json::to_string(self).expect("an upsert message always serialises");
        sqs_safe(json)
    }

    pub fn from_json(body: &str) -> Result<Self, MessageError> {
        let message: Self = serde_json::from_str(body)?;
        message.supported()
    }

    fn supported(self) -> Result<Self, MessageError> {
        if self.version != MESSAGE_VERSION {
            return Err(MessageError::UnsupportedVersion(self.version));
        }
        Ok(self)
    }

    /// The messages of one SQS body: one message, or a JSON array of them (a batch's
    /// upserts packed by [`pack`]).
    pub fn all_from_json(body: &str) -> Result<Vec<Self>, MessageError> {
        if !body.trim_start().starts_with('[') {
            return Self::from_json(body).map(|message| vec![message]);
        }
        let messages: Vec<Self> = serde_json::from_str(body)?;
        if messages.is_empty() {
            return Err(MessageError::Empty);
        }
        messages.into_iter().map(Self::supported).collect()
    }
}

/// SQS refuses a body holding U+FFFE or U+FFFF, which JSON allows and serde_json
/// writes as they are: written as escapes they mean the same and SQS takes them. (Every
/// other character SQS refuses, a control character or a lone surrogate, is escaped by
/// serde_json or cannot be in a Rust string.)
fn sqs_safe(json: String) -> String {
    if !json.contains(['\u{fffe}', '\u{ffff}']) {
        return json;
    }
    json.replace('\u{fffe}', "\\ufffe")
        .replace('\u{ffff}', "\\uffff")
}

/// A packed SQS body stays within one 64 KiB billing chunk of SQS (one message alone
/// may be bigger: a 32 KiB upsert always travels)...
const MAX_PACKED_BYTES: usize = 64 * 1024;
/// ...and holds few enough upserts that a consumer batch of 10 bodies stays small:
/// the consumer holds the profiles of a batch's users in memory.
const MAX_PACKED_MESSAGES: usize = 50;

/// One SQS body holding `messages` (indices into what was packed), in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub messages: std::ops::Range<usize>,
    pub body: String,
}

/// Packs messages, in order, into as few SQS bodies as the limits above allow. A body
/// of one message is the message itself, so a batch of one travels as a single upsert.
pub fn pack(messages: &[UpsertMessage]) -> Vec<Packed> {
    let mut packed: Vec<Packed> = Vec::new();
    let mut start = 0;
    let mut body = String::new();
    for (index, message) in messages.iter().enumerate() {
        let json = message.to_json();
        let count = index - start;
        // `[`, a comma per message, `]`.
        let fits = count < MAX_PACKED_MESSAGES && body.len() + json.len() + 2 <= MAX_PACKED_BYTES;
        if count > 0 && !fits {
            packed.push(close(start..index, std::mem::take(&mut body)));
            start = index;
        }
        body.push(if index == start { '[' } else { ',' });
        body.push_str(&json);
    }
    if start < messages.len() {
        packed.push(close(start..messages.len(), body));
    }
    packed
}

fn close(messages: std::ops::Range<usize>, mut body: String) -> Packed {
    if messages.len() == 1 {
        body.remove(0);
    } else {
        body.push(']');
    }
    Packed { messages, body }
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

    fn numbered(count: usize, trait_bytes: usize) -> Vec<UpsertMessage> {
        (0..count)
            .map(|i| {
                let mut changes = Changes::default();
                changes
                    .traits
                    .insert("blob".into(), Some(json!("x".repeat(trait_bytes))));
                UpsertMessage {
                    version: MESSAGE_VERSION,
                    workspace_id: "ws".into(),
                    external_user_id: format!("u{i}"),
                    stamp: Stamp {
                        accepted_at: 1,
                        request_id: format!("r.{i:04}"),
                    },
                    changes,
                    erase: false,
                }
            })
            .collect()
    }

    #[test]
    fn pack_fills_bodies_in_order_within_the_limits() {
        for (count, trait_bytes) in [
            (1, 10),
            (49, 10),
            (50, 10),
            (51, 10),
            (1_000, 300),
            (40, 20_000),
            (3, 33_000),
        ] {
            let messages = numbered(count, trait_bytes);
            let packed = pack(&messages);
            let mut next = 0;
            for body in &packed {
                assert_eq!(body.messages.start, next);
                next = body.messages.end;
                assert!(body.messages.len() <= MAX_PACKED_MESSAGES);
                assert!(body.messages.len() == 1 || body.body.len() <= MAX_PACKED_BYTES);
                let unpacked = UpsertMessage::all_from_json(&body.body).unwrap();
                assert_eq!(unpacked, messages[body.messages.clone()]);
            }
            assert_eq!(next, count);
            // Nothing could have joined the body before it.
            for pair in packed.windows(2) {
                let first = messages[pair[1].messages.start].to_json();
                assert!(
                    pair[0].messages.len() == MAX_PACKED_MESSAGES
                        || pair[0].body.len() + first.len() + 1 > MAX_PACKED_BYTES
                );
            }
        }
        assert_eq!(pack(&numbered(1_000, 300)).len(), 20);
        assert!(!pack(&numbered(1, 10))[0].body.starts_with('['));
    }

    #[test]
    fn packed_bodies_that_hold_nothing_or_garbage_are_refused() {
        assert!(matches!(
            UpsertMessage::all_from_json("[]"),
            Err(MessageError::Empty)
        ));
        assert!(matches!(
            UpsertMessage::all_from_json(" [1]"),
            Err(MessageError::Malformed(_))
        ));
        let one = numbered(1, 1)[0].to_json();
        let old = one.replace("\"version\":1", "\"version\":9");
        assert!(matches!(
            UpsertMessage::all_from_json(&format!("[{one},{old}]")),
            Err(MessageError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn characters_sqs_refuses_travel_as_escapes_and_come_back_unchanged() {
        let mut message = numbered(1, 1).remove(0);
        let value = json!("a\u{fffe}b\u{ffff}c\u{fffd}");
        message
            .changes
            .traits
            .insert("odd".into(), Some(value.clone()));
        let body = message.to_json();
        assert!(!body.contains(['\u{fffe}', '\u{ffff}']), "{body}");
        assert!(body.contains("\\ufffe") && body.contains('\u{fffd}'));
        let back = UpsertMessage::from_json(&body).unwrap();
        assert_eq!(back.changes.traits["odd"], Some(value));
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
