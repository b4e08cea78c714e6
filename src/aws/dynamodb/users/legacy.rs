//! A user's profile as attributes of its item (format 1): each known field its own
//! attribute, `traits` a map, each field's stamp as text in `stamps`. Every item
//! written before format 2 has it, and items keep it until their next write; a
//! profile whose document would pass `DOCUMENT_MOST` is still written this way
//! (`item.rs`). Read leniently: a missing or odd attribute reads as absent, so an
//! older or hand-edited item never stops the consumer.

use super::*;

/// The `set_once` writes a field keeps: `{key: {"applies": BOOL, "writes": [{"stamp",
/// "value"}]}}`.
const SET_ONCE: &str = "set_once";
/// An attribute every format-1 item has and no format-2 item has: what the count of
/// items still to migrate looks for.
pub const STAMPS: &str = "stamps";

/// Adds the profile's attributes to an item holding its keys.
pub(super) fn insert_attributes(item: &mut Item, profile: &UserProfile) {
    for (field, value) in &profile.profile {
        item.insert(field.attribute().to_owned(), s(value));
    }
    if !profile.traits.is_empty() {
        let traits = profile
            .traits
            .iter()
            .map(|(name, value)| (name.clone(), to_attribute(value)))
            .collect();
        item.insert("traits".to_owned(), AttributeValue::M(traits));
    }
    let stamps = profile
        .stamps
        .iter()
        .map(|(key, stamp)| (key.clone(), s(stamp_text(stamp))))
        .collect();
    item.insert(STAMPS.to_owned(), AttributeValue::M(stamps));
    if !profile.once.is_empty() {
        item.insert(SET_ONCE.to_owned(), once_attribute(&profile.once));
    }
    if let Some(last) = &profile.last_write {
        item.insert("last_write".to_owned(), s(stamp_text(last)));
    }
    if let Some(floor) = &profile.floor {
        item.insert("stamps_floor".to_owned(), s(stamp_text(floor)));
    }
    if let Some(erased) = &profile.erased {
        item.insert("erased".to_owned(), s(stamp_text(erased)));
    }
    if !profile.rejected.is_empty() {
        let rejected = profile
            .rejected
            .iter()
            .map(|r| {
                AttributeValue::M(HashMap::from([
                    ("name".to_owned(), s(&r.name)),
                    ("reason".to_owned(), s(r.reason.as_str())),
                    ("stamp".to_owned(), s(stamp_text(&r.stamp))),
                ]))
            })
            .collect();
        item.insert("rejected_traits".to_owned(), AttributeValue::L(rejected));
    }
    if let Some(created_at) = profile.created_at {
        item.insert("created_at".to_owned(), n(created_at));
    }
    if let Some(updated_at) = profile.updated_at {
        item.insert("updated_at".to_owned(), n(updated_at));
    }
}

/// The profile an item's attributes hold.
pub(super) fn profile_from_attributes(item: &Item) -> UserProfile {
    let profile = ProfileField::ALL
        .into_iter()
        .filter_map(|field| Some((field, get_s(item, field.attribute())?.to_owned())))
        .collect();
    let traits: BTreeMap<String, Value> = item
        .get("traits")
        .and_then(|v| v.as_m().ok())
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.clone(), from_attribute(value)))
        .collect();
    let stamps = item
        .get(STAMPS)
        .and_then(|v| v.as_m().ok())
        .into_iter()
        .flatten()
        .filter_map(|(key, v)| Some((key.clone(), parse_stamp(v.as_s().ok()?)?)))
        .collect();
    let rejected = item
        .get("rejected_traits")
        .and_then(|v| v.as_l().ok())
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.as_m().ok()?;
            Some(RejectedTrait {
                name: get_s(entry, "name")?.to_owned(),
                reason: RejectReason::parse(get_s(entry, "reason")?)?,
                stamp: parse_stamp(get_s(entry, "stamp")?)?,
            })
        })
        .collect();
    UserProfile {
        profile,
        traits,
        stamps,
        floor: get_s(item, "stamps_floor").and_then(parse_stamp),
        rejected,
        erased: get_s(item, "erased").and_then(parse_stamp),
        once: once_from_attribute(item.get(SET_ONCE)),
        last_write: get_s(item, "last_write").and_then(parse_stamp),
        created_at: get_n(item, "created_at"),
        updated_at: get_n(item, "updated_at"),
    }
}

fn once_attribute(once: &BTreeMap<String, OnceWrites>) -> AttributeValue {
    let fields = once
        .iter()
        .map(|(key, field)| {
            let writes = field
                .writes
                .iter()
                .map(|w| {
                    AttributeValue::M(HashMap::from([
                        ("stamp".to_owned(), s(stamp_text(&w.stamp))),
                        ("value".to_owned(), to_attribute(&w.value)),
                    ]))
                })
                .collect();
            let field = HashMap::from([
                ("applies".to_owned(), AttributeValue::Bool(field.applies)),
                ("writes".to_owned(), AttributeValue::L(writes)),
            ]);
            (key.clone(), AttributeValue::M(field))
        })
        .collect();
    AttributeValue::M(fields)
}

fn once_from_attribute(attribute: Option<&AttributeValue>) -> BTreeMap<String, OnceWrites> {
    let fields = attribute.and_then(|a| a.as_m().ok()).into_iter().flatten();
    fields
        .filter_map(|(key, field)| {
            let field = field.as_m().ok()?;
            let writes = field
                .get("writes")?
                .as_l()
                .ok()?
                .iter()
                .filter_map(|w| {
                    let w = w.as_m().ok()?;
                    Some(OnceWrite {
                        stamp: parse_stamp(get_s(w, "stamp")?)?,
                        value: from_attribute(w.get("value")?),
                    })
                })
                .collect();
            let applies = field.get("applies").and_then(|a| a.as_bool().ok()).copied();
            Some((
                key.clone(),
                OnceWrites {
                    applies: applies.unwrap_or(false),
                    writes,
                },
            ))
        })
        .collect()
}
