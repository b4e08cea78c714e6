//! A JSON object read the way the contract reads every body: a member named twice is
//! refused at its path (two parsers must never read two requests from one body),
//! numbers are judged on their literal text (never rounded, never zeroed), and errors
//! are listed in the order the body names their fields.

use super::numbers::{is_json_number, is_storable, scan};
use super::{BodyError, ErrorCode, FieldError};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// An object's members, and the paths of its numbers that cannot be stored exactly
/// (each read as 0, so that the rest of the object can still be checked).
pub(crate) struct ReadObject<'a> {
    pub members: Map<String, Value>,
    pub unstorable: HashSet<String>,
    /// The body as read: its unstorable numbers as 0 (what `in_body_order` reads).
    pub text: Cow<'a, [u8]>,
}

/// Reads a JSON object: not JSON or not an object is `InvalidJson`, a member named
/// twice (at any depth) `Invalid` with `duplicate_field` at each such path.
pub(crate) fn read_object(body: &[u8]) -> Result<ReadObject<'_>, BodyError> {
    let scanned = scan(body);
    let unstorable = unstorable_numbers(body, scanned.numbers);
    // A number no double can hold (`1e400`) would fail the whole parse: it is read as
    // 0 instead, and reported at its path.
    let readable: Cow<[u8]> = if unstorable.is_empty() {
        Cow::Borrowed(body)
    } else {
        Cow::Owned(with_zeros(body, &unstorable))
    };
    let value: Value = serde_json::from_slice(&readable)
        .map_err(|e| BodyError::InvalidJson(format!("body is not valid JSON: {e}")))?;
    let Value::Object(members) = value else {
        return Err(BodyError::InvalidJson("body must be a JSON object".into()));
    };
    if member_count(&members) != scanned.members {
        return Err(BodyError::Invalid(duplicate_members(&readable)));
    }
    Ok(ReadObject {
        members,
        unstorable: number_paths(&readable, &unstorable),
        text: readable,
    })
}

/// The literal text of the number at `path` (`userId`) as `body` spells it, `text`
/// being the body as read (unstorable numbers as 0: the same numbers in the same order).
pub(crate) fn number_literal<'a>(body: &'a [u8], text: &[u8], path: &str) -> Option<&'a str> {
    let mut paths = BodyPaths::default();
    paths.record(text);
    let ordinal = paths.numbers.iter().position(|p| p == path)?;
    let range = scan(body).numbers.into_iter().nth(ordinal)?;
    std::str::from_utf8(&body[range]).ok()
}

/// Number literals (their ordinal among the body's numbers, and where they stand)
/// that cannot be stored exactly; literals outside JSON's grammar are left for the
/// parser to refuse.
fn unstorable_numbers(body: &[u8], literals: Vec<Range<usize>>) -> Vec<(usize, Range<usize>)> {
    literals
        .into_iter()
        .enumerate()
        .filter(|(_, range)| {
            std::str::from_utf8(&body[range.clone()])
                .is_ok_and(|literal| is_json_number(literal) && !is_storable(literal))
        })
        .collect()
}

fn with_zeros(body: &[u8], literals: &[(usize, Range<usize>)]) -> Vec<u8> {
    let mut readable = Vec::with_capacity(body.len());
    let mut copied = 0;
    for (_, range) in literals {
        readable.extend_from_slice(&body[copied..range.start]);
        readable.push(b'0');
        copied = range.end;
    }
    readable.extend_from_slice(&body[copied..]);
    readable
}

/// The body paths (`traits.tags[2]`) of the given number literals.
fn number_paths(body: &[u8], literals: &[(usize, Range<usize>)]) -> HashSet<String> {
    if literals.is_empty() {
        return HashSet::new();
    }
    let mut paths = BodyPaths::default();
    paths.record(body);
    literals
        .iter()
        .filter_map(|(ordinal, _)| paths.numbers.get(*ordinal).cloned())
        .collect()
}

/// Members of the objects of a value, at every depth.
fn member_count(members: &Map<String, Value>) -> usize {
    fn of(value: &Value) -> usize {
        match value {
            Value::Object(members) => member_count(members),
            Value::Array(items) => items.iter().map(of).sum(),
            _ => 0,
        }
    }
    members.len() + members.values().map(of).sum::<usize>()
}

/// A `duplicate_field` error at every member named twice in its object, in body order.
fn duplicate_members(body: &[u8]) -> Vec<FieldError> {
    let mut paths = BodyPaths::default();
    paths.record(body);
    paths
        .duplicates
        .into_iter()
        .map(|path| {
            let message = format!("{path} is named twice in its object");
            FieldError::new(ErrorCode::DuplicateField, path, message)
        })
        .collect()
}

/// The validator walks objects in key order; the contract lists errors in body order.
/// Errors are rare, so their order is found by a second pass over the raw body that
/// numbers every member and item path (`traits.tags[2]`) in document order. An error
/// whose field is not in the body (a missing member) comes first.
pub(crate) fn in_body_order(mut errors: Vec<(String, FieldError)>, body: &[u8]) -> Vec<FieldError> {
    let mut paths = BodyPaths::default();
    paths.record(body);
    let positions = paths.positions;
    errors.sort_by_key(|(location, _)| positions.get(location).map_or(0, |p| p + 1));
    errors.into_iter().map(|(_, error)| error).collect()
}

/// Every member and item path of a body numbered in document order, and the paths of
/// its numbers in document order.
#[derive(Default)]
struct BodyPaths {
    positions: HashMap<String, usize>,
    numbers: Vec<String>,
    /// Paths of members named a second time in their object, in document order.
    duplicates: Vec<String>,
}

impl BodyPaths {
    fn record(&mut self, body: &[u8]) {
        let mut path = String::new();
        let recorder = PathRecorder {
            path: &mut path,
            paths: self,
            root: true,
        };
        // The body already parsed once; a failure here only leaves paths incomplete.
        let _ = recorder.deserialize(&mut serde_json::Deserializer::from_slice(body));
    }
}

struct PathRecorder<'a> {
    path: &'a mut String,
    paths: &'a mut BodyPaths,
    /// The document itself: its members' paths have no leading `.` (a member named
    /// `""` must not make its children's paths those of top-level members).
    root: bool,
}

impl PathRecorder<'_> {
    fn child(&mut self) -> PathRecorder<'_> {
        let position = self.paths.positions.len();
        self.paths
            .positions
            .entry(self.path.clone())
            .or_insert(position);
        PathRecorder {
            path: self.path,
            paths: self.paths,
            root: false,
        }
    }

    fn number(self) {
        self.paths.numbers.push(self.path.clone());
    }
}

impl<'de> DeserializeSeed<'de> for PathRecorder<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathRecorder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.number();
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.number();
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.number();
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<(), A::Error> {
        let len = self.path.len();
        for i in 0.. {
            self.path.push_str(&format!("[{i}]"));
            let more = items.next_element_seed(self.child())?.is_some();
            self.path.truncate(len);
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut members: A) -> Result<(), A::Error> {
        let len = self.path.len();
        let mut names = HashSet::new();
        while let Some(name) = members.next_key::<Cow<'de, str>>()? {
            if !self.root {
                self.path.push('.');
            }
            self.path.push_str(&name);
            if !names.insert(name) {
                self.paths.duplicates.push(self.path.clone());
            }
            members.next_value_seed(self.child())?;
            self.path.truncate(len);
        }
        Ok(())
    }
}
