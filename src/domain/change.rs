//! What a write to the users table tells downstream views: the pure diff of a user's
//! old and new item images as the contract's change event. No AWS in here.

use super::view::{format_millis, read_fields};
use crate::domain::{trait_path, ProfileField, Stamp, UserProfile};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub const SOURCE: &str = "vibefollow.users";
pub const USER_CHANGED: &str = "User Changed";
pub const USER_DELETED: &str = "User Deleted";
/// EventBridge refuses events over 256 KB; past this, changed values are left out
/// (`values_omitted`), and a view reads the user instead.
const MAX_DETAIL_BYTES: usize = 200 * 1024;

/// One side of a write: the user as stored, or nothing (no item, or a tombstone).
pub struct Image<'a> {
    pub external_user_id: &'a str,
    pub profile: &'a UserProfile,
    pub version: u64,
}

/// A change event, ready for `PutEvents`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `vibefollow.users`, or `vibefollow.audiences` (`domain::audience`).
    pub source: &'static str,
    pub detail_type: &'static str,
    pub detail: Value,
}

/// The event for one write of one user, or `None` if nothing a read shows changed.
pub fn change_event(
    workspace_id: &str,
    old: Option<Image>,
    new: Option<Image>,
) -> Option<ChangeEvent> {
    let old = old.filter(|image| image.profile.exists());
    let (old_fields, new_fields) = (
        fields(old.as_ref()),
        fields(new.as_ref().filter(|i| i.profile.exists())),
    );
    match (&old, &new) {
        // An erasure: the new image is a tombstone (or the item is gone).
        (Some(old), new) if !new.as_ref().is_some_and(|n| n.profile.exists()) => {
            let version = new.as_ref().map_or(old.version, |n| n.version);
            let stamp = new
                .as_ref()
                .and_then(|n| n.profile.erased.clone())
                .unwrap_or_else(|| latest_stamp(old.profile, None));
            let mut detail = identity(workspace_id, old, version, &stamp);
            detail.insert("id".into(), json!(event_id(workspace_id, old, version)));
            Some(ChangeEvent {
                source: SOURCE,
                detail_type: USER_DELETED,
                detail: Value::Object(detail),
            })
        }
        (_, Some(new)) if new.profile.exists() => {
            let mut changed = Map::new();
            let names: std::collections::BTreeSet<&String> =
                old_fields.keys().chain(new_fields.keys()).collect();
            for name in names {
                let (before, after) = (old_fields.get(name), new_fields.get(name));
                if before == after {
                    continue;
                }
                let mut change = Map::new();
                if let Some(before) = before {
                    change.insert("old".into(), before.clone());
                }
                if let Some(after) = after {
                    change.insert("new".into(), after.clone());
                }
                changed.insert(name.clone(), Value::Object(change));
            }
            // A user's first write is news even when it sets no field.
            if changed.is_empty() && old.is_some() {
                return None;
            }
            let stamp = latest_stamp(new.profile, Some(&changed));
            let mut detail = identity(workspace_id, new, new.version, &stamp);
            detail.insert("id".into(), json!(event_id(workspace_id, new, new.version)));
            detail.insert("changed".into(), Value::Object(changed));
            if serde_json::to_string(&detail).map_or(0, |d| d.len()) > MAX_DETAIL_BYTES {
                omit_values(&mut detail);
            }
            Some(ChangeEvent {
                source: SOURCE,
                detail_type: USER_CHANGED,
                detail: Value::Object(detail),
            })
        }
        _ => None,
    }
}

/// The fields as a read shows them: `email`, and every trait by its name.
fn fields(image: Option<&Image>) -> Map<String, Value> {
    image.map_or_else(Map::new, |image| read_fields(image.profile))
}

fn identity(workspace_id: &str, image: &Image, version: u64, stamp: &Stamp) -> Map<String, Value> {
    let mut detail = Map::new();
    detail.insert("workspace_id".into(), json!(workspace_id));
    detail.insert("external_user_id".into(), json!(image.external_user_id));
    detail.insert("version".into(), json!(version));
    let mut stamp_detail = json!({"accepted_at": format_millis(stamp.accepted_at).unwrap_or_default(), "request_id": stamp.request_id});
    if let Some(at) = stamp.timestamp.and_then(format_millis) {
        stamp_detail["timestamp"] = json!(at);
    }
    detail.insert("stamp".into(), stamp_detail);
    detail
}

/// The same for every delivery of one write: the user, its incarnation (a user erased
/// and created again starts a new one) and the item version the write made.
fn event_id(workspace_id: &str, image: &Image, version: u64) -> String {
    let created_at = image.profile.created_at.unwrap_or_default();
    let mut hasher = Sha256::new();
    for part in [
        workspace_id,
        image.external_user_id,
        &created_at.to_string(),
        &version.to_string(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// The latest stamp among the changed fields (all fields if `changed` is `None` or
/// names none), or the update time when the profile holds no stamp.
fn latest_stamp(profile: &UserProfile, changed: Option<&Map<String, Value>>) -> Stamp {
    let stamp_key = |name: &str| match name {
        "email" => ProfileField::Email.attribute().to_owned(),
        _ => ProfileField::from_trait_name(name)
            .map_or_else(|| trait_path(name), |f| f.attribute().to_owned()),
    };
    let of_changed = changed
        .filter(|changed| !changed.is_empty())
        .map(|changed| {
            changed
                .keys()
                .filter_map(|name| profile.stamps.get(&stamp_key(name)))
                .max()
                .cloned()
        });
    of_changed
        .unwrap_or_else(|| profile.stamps.values().max().cloned())
        .unwrap_or_else(|| Stamp::new(profile.updated_at.unwrap_or_default(), String::new()))
}

fn omit_values(detail: &mut Map<String, Value>) {
    if let Some(Value::Object(changed)) = detail.get_mut("changed") {
        for change in changed.values_mut() {
            *change = json!({"omitted": true});
        }
    }
    detail.insert("values_omitted".into(), json!(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    use crate::contract::parse_upsert;
    use crate::domain::UpsertMessage;

    fn applied(profile: &UserProfile, at: i64, body: Value) -> UserProfile {
        let upsert = parse_upsert(body.to_string().as_bytes(), NOW).unwrap();
        let mut next = profile.clone();
        next.apply_message(&UpsertMessage {
            version: crate::domain::MESSAGE_VERSION,
            workspace_id: "ws".into(),
            external_user_id: "u1".into(),
            stamp: Stamp::new(at, format!("r{at}")),
            changes: upsert.changes,
            erase: false,
        });
        next
    }

    fn image(profile: &UserProfile, version: u64) -> Image<'_> {
        Image {
            external_user_id: "u1",
            profile,
            version,
        }
    }

    #[test]
    fn a_new_user_publishes_every_field_it_set_with_no_old_values() {
        let new = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1", "email": "a@b.io", "traits": {"signupDate": "2026-05-17T16:00:00+02:00", "color": "red"}}),
        );
        let event = change_event("ws", None, Some(image(&new, 1))).unwrap();
        assert_eq!(event.detail_type, USER_CHANGED);
        assert_eq!(
            event.detail["changed"],
            json!({
            "email": {"new": "a@b.io"}, "signupDate": {"new": "2026-05-17T14:00:00Z"}, "color": {"new": "red"}})
        );
        assert_eq!(event.detail["version"], 1);
        assert_eq!(event.detail["stamp"]["request_id"], "r1000");
        let empty = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1"}),
        );
        let created = change_event("ws", None, Some(image(&empty, 1))).unwrap();
        assert_eq!(created.detail["changed"], json!({}));
    }

    #[test]
    fn only_changed_fields_with_old_and_new_and_removals_without_new() {
        let old = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1", "email": "a@b.io", "traits": {"plan": "free", "color": "red", "n": 1}}),
        );
        let new = applied(
            &old,
            2_000,
            json!({"external_user_id": "u1", "traits": {"plan": "pro", "color": null, "n": 1}}),
        );
        let event = change_event("ws", Some(image(&old, 1)), Some(image(&new, 2))).unwrap();
        assert_eq!(
            event.detail["changed"],
            json!({"plan": {"old": "free", "new": "pro"}, "color": {"old": "red"}})
        );
        assert_eq!(event.detail["stamp"]["request_id"], "r2000");
        assert!(event.detail.get("values_omitted").is_none());
    }

    #[test]
    fn a_write_that_changes_nothing_a_read_shows_publishes_nothing() {
        let old = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1", "traits": {"plan": "pro"}}),
        );
        let same = applied(
            &old,
            2_000,
            json!({"external_user_id": "u1", "traits": {"plan": "pro"}}),
        );
        assert_eq!(
            change_event("ws", Some(image(&old, 1)), Some(image(&same, 2))),
            None
        );
    }

    #[test]
    fn an_erasure_is_user_deleted_without_pii_and_a_recreation_is_new() {
        let old = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1", "email": "a@b.io", "traits": {"plan": "pro"}}),
        );
        let mut erased = old.clone();
        erased.erase(&Stamp::new(3_000, "del"));
        let event = change_event("ws", Some(image(&old, 1)), Some(image(&erased, 2))).unwrap();
        assert_eq!(event.detail_type, USER_DELETED);
        assert_eq!(event.detail["stamp"]["request_id"], "del");
        assert!(
            !event.detail.to_string().contains("a@b.io") && event.detail.get("changed").is_none()
        );
        // Expiry of the tombstone, or a late message the tombstone ignores: nothing.
        assert_eq!(change_event("ws", Some(image(&erased, 2)), None), None);
        assert_eq!(
            change_event("ws", Some(image(&erased, 2)), Some(image(&erased, 3))),
            None
        );
        let again = applied(
            &erased,
            4_000,
            json!({"external_user_id": "u1", "traits": {"plan": "team"}}),
        );
        let recreated =
            change_event("ws", Some(image(&erased, 2)), Some(image(&again, 3))).unwrap();
        assert_eq!(
            recreated.detail["changed"],
            json!({"plan": {"new": "team"}})
        );
    }

    #[test]
    fn ids_are_stable_per_write_and_differ_between_writes_and_incarnations() {
        let one = applied(
            &UserProfile::default(),
            1_000,
            json!({"external_user_id": "u1", "traits": {"plan": "a"}}),
        );
        let two = applied(
            &one,
            2_000,
            json!({"external_user_id": "u1", "traits": {"plan": "b"}}),
        );
        let id = |old, new| change_event("ws", old, Some(new)).unwrap().detail["id"].clone();
        assert_eq!(
            id(Some(image(&one, 1)), image(&two, 2)),
            id(Some(image(&one, 1)), image(&two, 2))
        );
        assert_ne!(
            id(None, image(&one, 1)),
            id(Some(image(&one, 1)), image(&two, 2))
        );
        let mut reborn = one.clone();
        reborn.created_at = Some(9_999);
        assert_ne!(id(None, image(&one, 1)), id(None, image(&reborn, 1)));
    }

    #[test]
    fn huge_changes_leave_values_out() {
        let old = UserProfile::default();
        let new = applied(
            &old,
            1_000,
            json!({"external_user_id": "u1", "traits": {"blob": "x".repeat(30_000), "b2": "y".repeat(30_000)}}),
        );
        let mut big = new.clone();
        for i in 0..8 {
            big = applied(
                &big,
                2_000 + i,
                json!({"external_user_id": "u1", "traits": {format!("more{i}"): "z".repeat(30_000)}}),
            );
        }
        let event = change_event("ws", None, Some(image(&big, 1))).unwrap();
        assert_eq!(event.detail["values_omitted"], true);
        assert_eq!(event.detail["changed"]["blob"], json!({"omitted": true}));
    }
}
