//! A user as the users table's item, and back: its keys and index attributes as
//! attributes, its profile in one of two formats — the `profile` document
//! (`document.rs`, what is written) or the attributes of format 1 (`legacy.rs`, what
//! items written before it hold until their next write). Reading takes either, so
//! the migration needs no rewrite of the table; `vfctl users formats` counts the
//! items still in format 1. Only a missing key or a damaged document makes an item
//! unreadable.

use super::*;

pub(super) fn email_key(workspace_id: &str, email: &str) -> String {
    workspace_key(workspace_id, &normalize_email(email))
}

/// How the consumer writes a user's profile (`USERS_ITEM_FORMAT`, `src/config.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileFormat {
    /// Format 1, attributes: what builds from before format 2 read. Written during the
    /// first deploy over such a stack, while its instances may still run
    /// (docs/runbooks.md).
    Attributes,
    /// Format 2, the `profile` document.
    #[default]
    Document,
}

impl ProfileFormat {
    /// `1` or `2`, as the variable gives it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "1" => Some(Self::Attributes),
            "2" => Some(Self::Document),
            _ => None,
        }
    }
}

pub(super) fn item_from_user(
    workspace_id: &str,
    user: &StoredUser,
    format: ProfileFormat,
) -> Result<Item, PortError> {
    let mut item = keys_of(workspace_id, user);
    let version = n(next_version(user.version, crate::clock::now_millis()));
    let document = match format {
        ProfileFormat::Document => Some(
            document::encode(&user.profile)
                .map_err(|_| PortError::Refused("profile_not_encodable".to_owned()))?,
        ),
        ProfileFormat::Attributes => None,
    };
    match document.filter(|document| document.len() <= DOCUMENT_MOST) {
        Some(document) => {
            item.insert(PROFILE.to_owned(), AttributeValue::B(Blob::new(document)));
            item.insert(PROFILE_VERSION.to_owned(), version);
        }
        None => {
            legacy::insert_attributes(&mut item, &user.profile);
            item.insert(VERSION.to_owned(), version);
        }
    }
    Ok(item)
}

/// The version of a format-1 item (the optimistic lock of every write).
pub(super) const VERSION: &str = "version";
/// The version of a format-2 item, under a name builds from before format 2 do not
/// know: they read such an item as a new user, so their write (`attribute_not_exists`)
/// fails instead of overwriting a profile they cannot read (a deploy's old instances).
pub(super) const PROFILE_VERSION: &str = "profile_version";

/// The attribute that holds a format-2 profile (`document.rs`).
pub const PROFILE: &str = "profile";
/// The longest document written: past it (a profile of hundreds of thousands of short
/// decimals, which MessagePack writes in 9 bytes and DynamoDB counts as 2) the
/// attribute form, which the traits budget keeps under 400 KB, is written instead.
const DOCUMENT_MOST: usize = 300 * 1024;

/// What every item holds whatever its format: keys, the index attributes and a
/// tombstone's expiry.
fn keys_of(workspace_id: &str, user: &StoredUser) -> Item {
    let profile = &user.profile;
    let mut item = Item::from([
        (
            PARTITION_KEY.to_owned(),
            s(workspace_key(workspace_id, &user.external_user_id)),
        ),
        listing(workspace_id, user),
        ("external_user_id".to_owned(), s(&user.external_user_id)),
    ]);
    if let Some(email) = profile.profile.get(&ProfileField::Email) {
        item.insert(EMAIL_KEY.to_owned(), s(email_key(workspace_id, email)));
    }
    // A tombstone (ids and the erasure's stamp) lives only as long as an older message
    // could still arrive; a user recreated since keeps its item.
    if let Some(erased) = profile.erased.as_ref().filter(|_| !profile.exists()) {
        let expires_at = erased.accepted_at / 1000 + TOMBSTONE_TTL_SECS;
        item.insert(TTL_ATTRIBUTE.to_owned(), n(expires_at));
    }
    item
}

/// Where a build finds the user: a shard of its workspace's users, or, for a user
/// created before the shards, the one key it is already listed under.
fn listing(workspace_id: &str, user: &StoredUser) -> (String, AttributeValue) {
    if user.listed_unsharded {
        return (UNSHARDED_KEY.to_owned(), s(workspace_id));
    }
    let shard = user_shard(workspace_id, &user.external_user_id, WORKSPACE_SHARDS);
    (
        WORKSPACE_SHARD_KEY.to_owned(),
        s(shard_key(workspace_id, shard)),
    )
}

/// The workspace and user an item holds (a stream image, say).
pub(in crate::aws::dynamodb) fn stored_user(item: &Item) -> Option<(String, StoredUser)> {
    Some((workspace_of(item)?.to_owned(), user_from_item(item).ok()??))
}

/// The workspace of an item: its key's first part (workspace ids hold no `#`).
pub(super) fn workspace_of(item: &Item) -> Option<&str> {
    Some(get_s(item, PARTITION_KEY)?.split_once('#')?.0)
}

/// A `profile` attribute this code cannot read: damaged, or from a newer format. The
/// user is not read as absent (which a write would then try to create over it).
#[derive(Debug, thiserror::Error)]
#[error("users_item_unreadable")]
pub struct UnreadableProfile;

impl From<UnreadableProfile> for PortError {
    fn from(unreadable: UnreadableProfile) -> Self {
        PortError::Refused(unreadable.to_string())
    }
}

/// The user an item holds; `None` for an item without a user id (not a user's).
pub(super) fn user_from_item(item: &Item) -> Result<Option<StoredUser>, UnreadableProfile> {
    let Some(external_user_id) = get_s(item, "external_user_id") else {
        return Ok(None);
    };
    let (profile, version) = match item.get(PROFILE) {
        Some(profile) => {
            let bytes = profile.as_b().map_err(|_| UnreadableProfile)?;
            let profile = document::decode(bytes.as_ref()).ok_or(UnreadableProfile)?;
            (profile, get_n(item, PROFILE_VERSION))
        }
        None => (legacy::profile_from_attributes(item), get_n(item, VERSION)),
    };
    Ok(Some(StoredUser {
        external_user_id: external_user_id.to_owned(),
        profile,
        version: version.unwrap_or(0),
        listed_unsharded: item.contains_key(UNSHARDED_KEY),
    }))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const NOW: i64 = 1_800_000_000_000;
    use crate::aws::sqs::{decode, encode};
    use crate::contract::parse_upsert;
    use crate::domain::user_view;
    use crate::domain::{Changes, Stamp, UpsertMessage};
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::{json, Map};
    use std::collections::HashMap;

    #[test]
    fn item_round_trips_a_user() {
        let mut profile = UserProfile::default();
        let mut changes = crate::domain::Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("Jane@Acme.io".into()));
        changes.profile.insert(ProfileField::Plan, None);
        changes.traits.insert(
            "nested".into(),
            Some(json!({"a": [1, 2.5, "x", null, true]})),
        );
        profile.apply(&Stamp::new(7, "r/1"), &changes);
        let user = StoredUser {
            external_user_id: "usr#1".into(),
            profile,
            version: 3,
            listed_unsharded: false,
        };
        let item = item_from_user("ws", &user, DOCUMENT).unwrap();
        assert_eq!(get_s(&item, EMAIL_KEY), Some("ws#jane@acme.io"));
        assert_eq!(get_s(&item, "pk"), Some("ws#usr#1"));
        let back = user_from_item(&item).unwrap().unwrap();
        assert_eq!(back.version, 4);
        // A new item starts its versions from the time, past any earlier life's.
        let created = StoredUser {
            version: 0,
            ..user.clone()
        };
        let first = user_from_item(&item_from_user("ws", &created, DOCUMENT).unwrap())
            .unwrap()
            .unwrap();
        assert!(first.version > 1_700_000_000_000, "{}", first.version);
        assert_eq!(back.profile, user.profile);
    }

    #[test]
    fn a_new_user_is_listed_in_a_shard_and_one_from_before_stays_where_it_is() {
        let user = StoredUser::new("u1");
        let item = item_from_user("ws", &user, DOCUMENT).unwrap();
        let shard = get_s(&item, WORKSPACE_SHARD_KEY).unwrap();
        assert!(
            shard
                .strip_prefix("ws#")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < WORKSPACE_SHARDS),
            "{shard}"
        );
        assert!(!item.contains_key(UNSHARDED_KEY));
        assert_eq!(stored_user(&item).unwrap().0, "ws");
        // An item from before the shards: read as such, and written back unmoved.
        let mut before = item.clone();
        before.remove(WORKSPACE_SHARD_KEY);
        before.insert(UNSHARDED_KEY.to_owned(), s("ws"));
        let (workspace_id, old) = stored_user(&before).unwrap();
        assert!(old.listed_unsharded);
        let rewritten = item_from_user(&workspace_id, &old, DOCUMENT).unwrap();
        assert_eq!(get_s(&rewritten, UNSHARDED_KEY), Some("ws"));
        assert!(!rewritten.contains_key(WORKSPACE_SHARD_KEY));
        // Spread over every shard.
        let shards: std::collections::BTreeSet<String> = (0..1_000)
            .map(|i| item_from_user("ws", &StoredUser::new(&format!("u{i}")), DOCUMENT).unwrap())
            .filter_map(|item| get_s(&item, WORKSPACE_SHARD_KEY).map(str::to_owned))
            .collect();
        assert_eq!(shards.len() as u64, WORKSPACE_SHARDS);
    }

    /// DynamoDB's item size: names + values; numbers ~1 byte per two digits + 1; lists
    /// and maps 3 + 1 per element.
    fn attribute_size(value: &AttributeValue) -> usize {
        match value {
            AttributeValue::S(text) => text.len(),
            AttributeValue::N(text) => {
                text.bytes().filter(u8::is_ascii_digit).count().div_ceil(2) + 1
            }
            AttributeValue::L(items) => {
                3 + items.iter().map(|v| 1 + attribute_size(v)).sum::<usize>()
            }
            AttributeValue::M(members) => {
                3 + members
                    .iter()
                    .map(|(k, v)| 1 + k.len() + attribute_size(v))
                    .sum::<usize>()
            }
            AttributeValue::B(bytes) => bytes.as_ref().len(),
            _ => 1,
        }
    }

    pub(crate) fn item_size(item: &Item) -> usize {
        item.iter()
            .map(|(name, value)| name.len() + attribute_size(value))
            .sum()
    }

    /// The largest profile the consumer can be made to write: every known field at its
    /// limit, the trait budget full of 256-byte names, the most rejections and removal
    /// stamps it keeps, the longest ids.
    pub(crate) fn full_profile() -> StoredUser {
        use crate::domain::budget::{MAX_REJECTED_TRAITS, MAX_REMOVED_STAMPS, TRAITS_BUDGET_BYTES};
        let mut profile = UserProfile::default();
        let stamp = |i: i64| Stamp::new(1_800_000_000_000 + i, uuid::Uuid::new_v4().to_string());
        let mut known = Changes::default();
        for field in ProfileField::ALL {
            let value = match field {
                ProfileField::Email => format!("{}@{}.io", "e".repeat(64), "d".repeat(63)),
                ProfileField::SignupDate => "2026-05-17T14:00:00Z".to_owned(),
                ProfileField::Plan | ProfileField::Role => "p".repeat(256),
                _ => "n".repeat(1024),
            };
            known.profile.insert(field, Some(value));
        }
        profile.apply(&stamp(0), &known);
        let name = |prefix: &str, i: usize| format!("{prefix}{i:04}{}", "x".repeat(248));
        for i in 0..MAX_REMOVED_STAMPS * 3 {
            let mut churn = Changes::default();
            churn.traits.insert(name("gone", i), None);
            profile.apply(&stamp(1 + i as i64), &churn);
        }
        let mut i = 0;
        while profile.traits_bytes() + 31_000 < TRAITS_BUDGET_BYTES {
            let mut fill = Changes::default();
            fill.traits
                .insert(name("fill", i), Some(json!("v".repeat(30_000))));
            profile.apply(&stamp(1_000 + i as i64), &fill);
            i += 1;
        }
        for j in 0..MAX_REJECTED_TRAITS {
            let mut refused = Changes::default();
            refused
                .traits
                .insert(name("big", j), Some(json!("r".repeat(31_000))));
            profile.apply(&stamp(2_000 + j as i64), &refused);
        }
        assert_eq!(profile.rejected.len(), MAX_REJECTED_TRAITS);
        StoredUser {
            external_user_id: "u".repeat(255),
            profile,
            version: 7,
            listed_unsharded: false,
        }
    }

    #[test]
    fn the_largest_item_the_consumer_writes_fits_dynamodb() {
        let user = full_profile();
        let workspace = "w".repeat(64);
        // Format 1, which the traits budget bounds, and format 2, which is written only
        // when its document is at most DOCUMENT_MOST.
        let legacy = item_size(&legacy_item_from_user(&workspace, &user));
        let written = item_size(&item_from_user(&workspace, &user, DOCUMENT).unwrap());
        let largest_document =
            item_size(&keys_of(&workspace, &user)) + PROFILE.len() + DOCUMENT_MOST;
        eprintln!("largest users item: format 1 {legacy} bytes, as written {written} bytes");
        for size in [legacy, written, largest_document] {
            assert!(
                size < 400 * 1024 * 9 / 10,
                "{size} bytes leaves under 10 % of DynamoDB's 400 KB"
            );
        }
    }

    fn edge_number() -> impl Strategy<Value = Value> {
        proptest::sample::select(vec![
            json!(0),
            json!(-0.0),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e125),
            json!(-9.5e125),
            json!(1e-130),
            json!(0.1),
            json!(1.5e-7),
        ])
    }

    fn custom_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            edge_number(),
            any::<i32>().prop_map(Value::from),
            "(|[a-z]{1,3}|żółw 🐢|\\u{0}x)".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-zé]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Acceptance of write `i`: `ACCEPTED + i` ms.
    pub(crate) const ACCEPTED: i64 = NOW - 1_000;
    /// The source times bodies may carry, from `ACCEPTED`: a few, so that they tie and
    /// interleave with the acceptance times.
    const SOURCE_OFFSETS: [i64; 4] = [3, 5, -500, 5];

    /// One upsert body: email set, removed or absent; known and custom traits set or
    /// removed (`null`); `set_once` of other names; a source `timestamp` or none.
    fn body() -> impl Strategy<Value = Value> {
        let email = proptest::option::of(proptest::sample::select(vec![
            Value::Null,
            json!("jane@acme.io"),
            json!(" Jane@Acme.io "),
        ]));
        let names = || proptest::sample::select(vec!["plan", "name", "a", "tags", "ü", "deep"]);
        let traits = proptest::collection::btree_map(
            names(),
            prop_oneof![
                Just(Value::Null),
                "(|pro|żółw)".prop_map(Value::from),
                custom_value()
            ],
            0..3,
        );
        let once = proptest::collection::btree_map(names(), "(first|second|żółw)", 0..3);
        let timestamp = proptest::option::of(proptest::sample::select(SOURCE_OFFSETS.to_vec()));
        (email, traits, once, timestamp).prop_map(|(email, traits, once, timestamp)| {
            let traits: Map<String, Value> = traits
                .into_iter()
                .map(|(name, value)| {
                    // Known traits take strings only.
                    let known = ProfileField::from_trait_name(name).is_some();
                    let value = if known && !value.is_string() && !value.is_null() {
                        json!("pro")
                    } else {
                        value
                    };
                    (name.to_owned(), value)
                })
                .collect();
            let once: Map<String, Value> = once
                .into_iter()
                .filter(|(name, _)| !traits.contains_key(*name))
                .map(|(name, value)| (name.to_owned(), json!(value)))
                .collect();
            let mut body = json!({"external_user_id": "u1", "traits": traits});
            if !once.is_empty() {
                body["set_once"] = Value::Object(once);
            }
            if let Some(email) = email {
                body["email"] = email;
            }
            if let Some(offset) = timestamp {
                body["timestamp"] = json!(crate::domain::format_millis(ACCEPTED + offset));
            }
            body
        })
    }

    /// Keeps at most `MAX_PENDING_ONCE` set_once writes of each name, in write order:
    /// the documented bound of what the merge remembers (see `UserProfile`).
    pub(crate) fn within_once_bound(mut writes: Vec<Option<Value>>) -> Vec<Option<Value>> {
        use crate::domain::budget::MAX_PENDING_ONCE;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for body in writes.iter_mut().flatten() {
            if let Some(Value::Object(once)) = body.get_mut("set_once") {
                once.retain(|name, _| {
                    let count = seen.entry(name.clone()).or_default();
                    *count += 1;
                    *count <= MAX_PENDING_ONCE
                });
            }
        }
        writes
    }

    /// The plain reference: the writes applied one by one in stamp order, as the
    /// contract says — traits and email overwrite, `null` removes, set_once sets only
    /// what is absent, an erasure removes everything. Returns the email, the traits
    /// and whether the user exists.
    fn in_stamp_order(
        writes: &[(Stamp, Option<Value>)],
    ) -> (Option<String>, Map<String, Value>, bool) {
        let mut sorted: Vec<&(Stamp, Option<Value>)> = writes.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut email: Option<String> = None;
        let mut traits = Map::new();
        let mut exists = false;
        for (_, write) in sorted {
            let Some(body) = write else {
                (email, traits, exists) = (None, Map::new(), false);
                continue;
            };
            exists = true;
            match body.get("email") {
                Some(Value::String(text)) => email = Some(text.trim().to_owned()),
                Some(_) => email = None,
                None => {}
            }
            for (name, value) in body["traits"].as_object().into_iter().flatten() {
                if value.is_null() {
                    traits.remove(name);
                } else {
                    traits.insert(name.clone(), value.clone());
                }
            }
            for (name, value) in body
                .get("set_once")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                traits.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        (email, traits, exists)
    }

    pub(crate) fn write() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![6 => body().prop_map(Some), 1 => Just(None)]
    }

    /// A user's writes as messages through SQS (the message as JSON text): write `i`
    /// accepted at `accepted(i)` under request id `request_id(i)`, an erasure stamped
    /// at its acceptance. Returns each write with its stamp, and the messages.
    pub(crate) fn messages_of(
        writes: &[Option<Value>],
        accepted: impl Fn(usize) -> i64,
        request_id: impl Fn(usize) -> String,
    ) -> (Vec<(Stamp, Option<Value>)>, Vec<UpsertMessage>) {
        let mut stamped = Vec::new();
        let mut messages = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let (changes, timestamp) = match write {
                Some(body) => {
                    let accepted = parse_upsert(body.to_string().as_bytes(), NOW)
                        .unwrap_or_else(|e| panic!("{body} was refused: {e:?}"));
                    (accepted.changes, accepted.timestamp)
                }
                None => (Changes::default(), None),
            };
            let stamp = Stamp::new(accepted(i), request_id(i)).at_source(timestamp);
            let message =
                UpsertMessage::new("ws", "u1".into(), stamp.clone(), changes, write.is_none());
            messages.push(decode(&encode(&message)).unwrap().remove(0));
            stamped.push((stamp, write.clone()));
        }
        (stamped, messages)
    }

    /// The messages delivered shuffled and duplicated as `order` says.
    pub(crate) fn shuffled<'a>(
        messages: &'a [UpsertMessage],
        order: &[proptest::sample::Index],
    ) -> Vec<&'a UpsertMessage> {
        let mut deliveries: Vec<&UpsertMessage> = messages.iter().collect();
        deliveries.extend(order.iter().map(|i| i.get(messages)));
        for (n, i) in order.iter().enumerate() {
            let len = deliveries.len();
            deliveries.swap(n % len, i.index(len));
        }
        deliveries
    }

    /// Applies each delivery and writes the user through DynamoDB's item and back,
    /// in format 1 where `legacy` says so (cycled), else in the format written now.
    pub(crate) fn deliver(
        mut user: StoredUser,
        deliveries: &[&UpsertMessage],
        legacy: &[bool],
    ) -> StoredUser {
        let formats = legacy.iter().copied().chain(std::iter::repeat(false));
        for (message, legacy) in deliveries.iter().zip(formats) {
            user.profile.apply_message(message);
            let item = if legacy {
                legacy_item_from_user("ws", &user)
            } else {
                item_from_user("ws", &user, DOCUMENT).unwrap()
            };
            user = user_from_item(&item).unwrap().unwrap();
        }
        user
    }

    /// The item the code before format 2 wrote (`legacy.rs`), as format 1 writes it.
    pub(crate) fn legacy_item_from_user(workspace_id: &str, user: &StoredUser) -> Item {
        item_from_user(workspace_id, user, ProfileFormat::Attributes).unwrap()
    }

    pub(crate) const DOCUMENT: ProfileFormat = ProfileFormat::Document;

    /// Whether the user reads as the writes applied one by one in stamp order: its
    /// view, and what rules see of it.
    pub(crate) fn equals_reference(
        user: &StoredUser,
        stamped: &[(Stamp, Option<Value>)],
    ) -> Result<(), TestCaseError> {
        let (email, traits, exists) = in_stamp_order(stamped);
        prop_assert_eq!(user.profile.exists(), exists);
        let view = user_view(&user.external_user_id, &user.profile, true);
        prop_assert_eq!(view.get("email").and_then(Value::as_str), email.as_deref());
        prop_assert_eq!(&view["traits"], &Value::Object(traits.clone()));
        let mut fields = traits;
        if let Some(email) = email {
            fields.insert("email".to_owned(), Value::String(email));
        }
        prop_assert_eq!(crate::domain::read_fields(&user.profile), fields);
        Ok(())
    }

    proptest! {
        /// Any mix of traits, `null`, set_once, source timestamps and erasures, delivered
        /// shuffled and duplicated, through SQS and DynamoDB at every step (each item
        /// written in either format, as during the migration), reads as the writes
        /// applied one by one in stamp order.
        #[test]
        fn stored_users_equal_the_writes_applied_in_stamp_order(
            writes in proptest::collection::vec(write(), 1..10),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
            legacy in proptest::collection::vec(any::<bool>(), 0..22),
        ) {
            let writes = within_once_bound(writes);
            let (stamped, messages) =
                messages_of(&writes, |i| ACCEPTED + i as i64, |i| format!("r{i}"));
            let user = deliver(StoredUser::new("u1"), &shuffled(&messages, &order), &legacy);
            equals_reference(&user, &stamped)?;
            prop_assert!(user.profile.rejected.is_empty());
        }
    }
}
