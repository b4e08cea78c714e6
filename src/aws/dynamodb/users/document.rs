//! A user's profile as one binary attribute (`profile`, format 2): MessagePack with
//! every stamp written once and referred to by its index, deflated when that makes
//! it smaller. A typical profile's per-field stamps were most of its bookkeeping
//! (~45 B of text per field, most of them the same few upserts); here a field costs
//! its name, and the item of the bench's ~1.5 KB profile bills 1 write unit, not 2.
//!
//! What is stored is the domain's `UserProfile` exactly (the merge's guarantees do not
//! depend on the format): `decode(encode(p)) == p`, and values keep their JSON type and
//! number (integers as integers, doubles bit for bit).

use crate::domain::{
    OnceWrite, OnceWrites, ProfileField, RejectReason, RejectedTrait, Stamp, UserProfile,
};
use flate2::Compression;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The first byte: how the rest is written.
const PLAIN: u8 = 1;
const DEFLATED: u8 = 2;
/// A document this long or longer is deflated if that makes it shorter: below it the
/// item is under a write unit anyway, and the CPU is not worth it.
const DEFLATE_FROM: usize = 512;
/// What inflating may produce at most: more than any item holds, so a damaged
/// attribute cannot make a reader allocate without bound.
const MAX_INFLATED: u64 = 4 * 1024 * 1024;

/// A stamp: `(timestamp at the source, accepted_at, request_id)`.
type StampRecord = (Option<i64>, i64, String);

/// Borrows the profile's values when written, owns them when read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Document<'a> {
    /// Every distinct stamp the profile holds, once.
    #[serde(rename = "k")]
    stamps: Vec<StampRecord>,
    /// `fields[i]`: the field keys (`plan`, `traits.color`) whose last overwrite is
    /// `stamps[i]`, removed fields included.
    #[serde(rename = "f", default)]
    fields: Vec<Vec<String>>,
    /// Known fields by attribute name (`email`, `plan`, …).
    #[serde(rename = "p", default, skip_serializing_if = "BTreeMap::is_empty")]
    profile: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(rename = "t", default)]
    traits: Cow<'a, BTreeMap<String, Value>>,
    /// Per field key: whether its first write applies, and the writes (stamp, value).
    #[serde(rename = "o", default, skip_serializing_if = "BTreeMap::is_empty")]
    once: BTreeMap<String, (bool, Vec<(u32, Value)>)>,
    /// Most recent first: (name, reason, stamp).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<(String, String, u32)>,
    #[serde(rename = "fl", default, skip_serializing_if = "Option::is_none")]
    floor: Option<u32>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    erased: Option<u32>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    last_write: Option<u32>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<i64>,
}

/// Hands out each distinct stamp's index, in the order first met.
#[derive(Default)]
struct StampTable<'a> {
    index: BTreeMap<&'a Stamp, u32>,
    records: Vec<StampRecord>,
    fields: Vec<Vec<String>>,
}

impl<'a> StampTable<'a> {
    fn of(&mut self, stamp: &'a Stamp) -> u32 {
        let next = self.records.len() as u32;
        *self.index.entry(stamp).or_insert_with(|| {
            self.records
                .push((stamp.timestamp, stamp.accepted_at, stamp.request_id.clone()));
            self.fields.push(Vec::new());
            next
        })
    }
}

/// The profile as the `profile` attribute's bytes.
pub(super) fn encode(profile: &UserProfile) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut table = StampTable::default();
    for (key, stamp) in &profile.stamps {
        let at = table.of(stamp) as usize;
        table.fields[at].push(key.clone());
    }
    let once = profile
        .once
        .iter()
        .map(|(key, field)| {
            let writes = field
                .writes
                .iter()
                .map(|w| (table.of(&w.stamp), w.value.clone()));
            (key.clone(), (field.applies, writes.collect()))
        })
        .collect();
    let rejected = profile
        .rejected
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.reason.as_str().to_owned(),
                table.of(&r.stamp),
            )
        })
        .collect();
    let floor = profile.floor.as_ref().map(|s| table.of(s));
    let erased = profile.erased.as_ref().map(|s| table.of(s));
    let last_write = profile.last_write.as_ref().map(|s| table.of(s));
    let document = Document {
        stamps: table.records,
        fields: table.fields,
        profile: profile
            .profile
            .iter()
            .map(|(field, value)| {
                (
                    Cow::Borrowed(field.attribute()),
                    Cow::Borrowed(value.as_str()),
                )
            })
            .collect(),
        traits: Cow::Borrowed(&profile.traits),
        once,
        rejected,
        floor,
        erased,
        last_write,
        created_at: profile.created_at,
        updated_at: profile.updated_at,
    };
    let mut plain = vec![PLAIN];
    rmp_serde::encode::write_named(&mut plain, &document)?;
    if plain.len() < DEFLATE_FROM {
        return Ok(plain);
    }
    let mut deflated = flate2::write::DeflateEncoder::new(vec![DEFLATED], Compression::fast());
    Ok(
        match deflated
            .write_all(&plain[1..])
            .and_then(|()| deflated.finish())
        {
            Ok(deflated) if deflated.len() < plain.len() => deflated,
            _ => plain,
        },
    )
}

/// The profile the bytes hold; `None` when they are not a document this code wrote.
pub(super) fn decode(bytes: &[u8]) -> Option<UserProfile> {
    let (&format, rest) = bytes.split_first()?;
    let document: Document = match format {
        PLAIN => rmp_serde::from_slice(rest).ok()?,
        DEFLATED => {
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(rest)
                .take(MAX_INFLATED)
                .read_to_end(&mut inflated)
                .ok()?;
            rmp_serde::from_slice(&inflated).ok()?
        }
        _ => return None,
    };
    let stamps: Vec<Stamp> = document
        .stamps
        .into_iter()
        .map(|(timestamp, accepted_at, request_id)| {
            Stamp::new(accepted_at, request_id).at_source(timestamp)
        })
        .collect();
    let stamp = |i: u32| stamps.get(i as usize).cloned();
    let mut field_stamps = BTreeMap::new();
    for (i, keys) in document.fields.into_iter().enumerate() {
        let at = stamps.get(i)?;
        field_stamps.extend(keys.into_iter().map(|key| (key, at.clone())));
    }
    // Like format 1's reader, an entry this code cannot read (a reason a newer build
    // added) is left out rather than making the whole profile unreadable.
    let once = document
        .once
        .into_iter()
        .map(|(key, (applies, writes))| {
            let writes = writes
                .into_iter()
                .filter_map(|(at, value)| {
                    Some(OnceWrite {
                        stamp: stamp(at)?,
                        value,
                    })
                })
                .collect();
            (key, OnceWrites { applies, writes })
        })
        .collect();
    let rejected = document
        .rejected
        .into_iter()
        .filter_map(|(name, reason, at)| {
            Some(RejectedTrait {
                name,
                reason: RejectReason::parse(&reason)?,
                stamp: stamp(at)?,
            })
        })
        .collect();
    let optional = |at: Option<u32>| at.map(stamp).map_or(Some(None), |s| s.map(Some));
    Some(UserProfile {
        profile: document
            .profile
            .into_iter()
            .filter_map(|(name, value)| {
                Some((ProfileField::from_attribute(&name)?, value.into_owned()))
            })
            .collect(),
        traits: document.traits.into_owned(),
        stamps: field_stamps,
        floor: optional(document.floor)?,
        rejected,
        erased: optional(document.erased)?,
        once,
        last_write: optional(document.last_write)?,
        created_at: document.created_at,
        updated_at: document.updated_at,
    })
}
