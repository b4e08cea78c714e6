//! Audiences (contract, "Audiences — the downstream view, live"): a rule over a user's
//! profile as a read shows it, its evaluation at an instant, and the next instant at
//! which a time-relative rule could change its mind about a user. Pure. Rules are
//! parsed from JSON by the contract (`contract::parse_rule`).

use memchr::memmem::Finder;
use serde_json::{Map, Value};
use std::collections::HashSet;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// At most this many audiences in one workspace.
pub const MAX_AUDIENCES: usize = 100;

/// What an audience id is, as error messages say it.
pub const AUDIENCE_ID_RULE: &str = "an audience id is 1 to 64 of A-Z, a-z, 0-9, _ and -";

/// An audience id: 1–64 of `[A-Za-z0-9_-]`.
pub fn is_audience_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Condition(Condition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `email`, or a trait by its name in `traits`.
    pub field: String,
    /// Members inside an object trait.
    pub path: Vec<String>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    In(ValueSet),
    NotIn(ValueSet),
    Exists,
    NotExists,
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    Contains(Box<Needle>),
    StartsWith(String),
    EndsWith(String),
    WithinLast(i64),
    NotWithinLast(i64),
}

/// The values of an `in` / `not_in` list, held for one lookup per evaluation instead of
/// a comparison per value (a list holds up to 1,000): each value in its canonical JSON,
/// and the strings also lower-cased, for `email`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValueSet {
    exact: HashSet<String>,
    folded: HashSet<String>,
}

impl ValueSet {
    pub fn new(values: &[Value]) -> Self {
        Self {
            exact: values.iter().map(Value::to_string).collect(),
            folded: values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_lowercase)
                .collect(),
        }
    }

    /// Whether `value` is one of the values: equal as JSON, or for `fold_case` (the
    /// `email` field) a string equal to one of the strings ignoring case.
    fn contains(&self, value: &Value, fold_case: bool) -> bool {
        match value {
            Value::String(text) if fold_case => self.folded.contains(&text.to_lowercase()),
            value => self.exact.contains(&value.to_string()),
        }
    }
}

/// What `contains` looks for: an element of an array trait, or for a string its
/// substring searcher, built once per rule (and its case-folded twin for `email`).
#[derive(Debug, Clone)]
pub struct Needle {
    value: Value,
    exact: Option<Finder<'static>>,
    folded: Option<Finder<'static>>,
}

impl PartialEq for Needle {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Needle {
    pub fn new(value: Value) -> Self {
        let text = value.as_str();
        Self {
            exact: text.map(|t| Finder::new(t).into_owned()),
            folded: text.map(|t| Finder::new(&t.to_lowercase()).into_owned()),
            value,
        }
    }

    /// Whether `text` holds the needle (ignoring case for `fold_case`); never for a
    /// needle that is not a string.
    fn in_text(&self, text: &str, fold_case: bool) -> bool {
        match (fold_case, &self.exact, &self.folded) {
            (true, _, Some(folded)) => folded.find(text.to_lowercase().as_bytes()).is_some(),
            (false, Some(exact), _) => exact.find(text.as_bytes()).is_some(),
            _ => false,
        }
    }
}

/// An ISO 8601 duration of days, hours, minutes and seconds (`P7D`, `PT12H`,
/// `P1DT2H30M`), in ms. Years, months and weeks vary in length: not taken.
pub fn duration_ms(text: &str) -> Option<i64> {
    let rest = text.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((days, time)) => (days, Some(time)),
        None => (rest, None),
    };
    let mut total: i64 = 0;
    let mut parts = 0;
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = allowed.find(|(u, _)| *u == c)?;
            let n: i64 = number.parse().ok()?;
            total = total.checked_add(n.checked_mul(unit.1)?)?;
            number.clear();
            parts += 1;
        }
        number.is_empty().then_some(())
    };
    take(days, &[('D', 86_400_000)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        take(time, &[('H', 3_600_000), ('M', 60_000), ('S', 1_000)])?;
    }
    (parts > 0).then_some(total)
}

pub(crate) fn instant_ms(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The fields of a user as a read shows them: `email` and every trait by its name.
pub type Fields = Map<String, Value>;

impl Rule {
    /// Whether a user with these fields is a member at `now_ms`.
    pub fn matches(&self, fields: &Fields, now_ms: i64) -> bool {
        match self {
            Rule::All(rules) => rules.iter().all(|r| r.matches(fields, now_ms)),
            Rule::Any(rules) => rules.iter().any(|r| r.matches(fields, now_ms)),
            Rule::Not(rule) => !rule.matches(fields, now_ms),
            Rule::Condition(condition) => condition.matches(fields, now_ms),
        }
    }

    /// The earliest instant after `now_ms` at which a time-relative condition of this
    /// rule changes its answer for these fields: the rule must be looked at again then.
    pub fn next_change_after(&self, fields: &Fields, now_ms: i64) -> Option<i64> {
        match self {
            Rule::All(rules) | Rule::Any(rules) => rules
                .iter()
                .filter_map(|r| r.next_change_after(fields, now_ms))
                .min(),
            Rule::Not(rule) => rule.next_change_after(fields, now_ms),
            Rule::Condition(condition) => condition.next_change_after(fields, now_ms),
        }
    }

    /// Whether time alone can change this rule's answer.
    pub fn is_time_relative(&self) -> bool {
        match self {
            Rule::All(rules) | Rule::Any(rules) => rules.iter().any(Rule::is_time_relative),
            Rule::Not(rule) => rule.is_time_relative(),
            Rule::Condition(condition) => {
                matches!(condition.op, Op::WithinLast(_) | Op::NotWithinLast(_))
            }
        }
    }
}

impl Condition {
    fn value<'a>(&self, fields: &'a Fields) -> Option<&'a Value> {
        let mut value = fields.get(&self.field)?;
        for member in &self.path {
            value = value.as_object()?.get(member)?;
        }
        Some(value)
    }

    fn matches(&self, fields: &Fields, now_ms: i64) -> bool {
        let value = self.value(fields);
        let email = self.field == "email" && self.path.is_empty();
        let equal = |a: &Value, b: &Value| match (a, b) {
            (Value::String(a), Value::String(b)) if email => a.to_lowercase() == b.to_lowercase(),
            _ => a == b,
        };
        let Some(value) = value else {
            return matches!(self.op, Op::NotExists);
        };
        match &self.op {
            Op::Exists => true,
            Op::NotExists => false,
            Op::Eq(expected) => equal(value, expected),
            Op::Ne(expected) => !equal(value, expected),
            Op::In(items) => items.contains(value, email),
            Op::NotIn(items) => !items.contains(value, email),
            Op::Gt(bound) => compare(value, bound).is_some_and(|o| o.is_gt()),
            Op::Gte(bound) => compare(value, bound).is_some_and(|o| o.is_ge()),
            Op::Lt(bound) => compare(value, bound).is_some_and(|o| o.is_lt()),
            Op::Lte(bound) => compare(value, bound).is_some_and(|o| o.is_le()),
            Op::Contains(needle) => match value {
                Value::String(text) => needle.in_text(text, email),
                Value::Array(items) => items.iter().any(|item| equal(item, &needle.value)),
                _ => false,
            },
            Op::StartsWith(prefix) => value.as_str().is_some_and(|text| {
                if email {
                    text.to_lowercase().starts_with(&prefix.to_lowercase())
                } else {
                    text.starts_with(prefix.as_str())
                }
            }),
            Op::EndsWith(suffix) => value.as_str().is_some_and(|text| {
                if email {
                    text.to_lowercase().ends_with(&suffix.to_lowercase())
                } else {
                    text.ends_with(suffix.as_str())
                }
            }),
            Op::WithinLast(window) => value
                .as_str()
                .and_then(instant_ms)
                .is_some_and(|at| at <= now_ms && at >= now_ms - window),
            Op::NotWithinLast(window) => value
                .as_str()
                .and_then(instant_ms)
                .is_some_and(|at| at < now_ms - window),
        }
    }

    fn next_change_after(&self, fields: &Fields, now_ms: i64) -> Option<i64> {
        let window = match self.op {
            Op::WithinLast(window) | Op::NotWithinLast(window) => window,
            _ => return None,
        };
        let at = self.value(fields)?.as_str().and_then(instant_ms)?;
        // The answer changes when the instant enters the window (it is in the future)
        // and when it leaves it (window after it).
        [at, at + window + 1]
            .into_iter()
            .filter(|t| *t > now_ms)
            .min()
    }
}

/// Numbers with numbers, RFC 3339 date-times with date-times (as instants).
fn compare(value: &Value, bound: &Value) -> Option<std::cmp::Ordering> {
    match (value, bound) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(instant_ms(a)?.cmp(&instant_ms(b)?)),
        _ => None,
    }
}

/// The events of membership changes, on the stack's bus.
pub const AUDIENCE_SOURCE: &str = "vibefollow.audiences";
pub const AUDIENCE_ENTERED: &str = "Audience Entered";
pub const AUDIENCE_EXITED: &str = "Audience Exited";

/// Why a membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The user changed.
    Change,
    /// Time passed a time-relative rule's edge.
    Time,
    /// A new or replaced rule was evaluated over the existing users.
    Build,
    /// The user was erased.
    Erase,
}

/// A user entering or leaving an audience, decided at `user_version` under rule
/// revision `rule_rev`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MembershipEvent {
    pub entered: bool,
    pub workspace_id: String,
    pub audience_id: String,
    pub external_user_id: String,
    pub user_version: u64,
    pub rule_rev: u64,
    /// Epoch ms.
    pub at: i64,
    pub reason: Reason,
    /// The revision the audience started at (its member count's, and which list
    /// entries are its own). 0 in decisions left pending by a version that did not
    /// record it.
    #[serde(default)]
    pub since_rev: u64,
    /// The revision of the user's memberships whose commit decided this move: one per
    /// move, so time moving a user in, out and in again at one `user_version` gives
    /// three ids. 0 in decisions left pending by a version that did not record it.
    #[serde(default)]
    pub commit: u64,
    /// The audience's member list is sharded ([`Audience::sharded`]); `false` in
    /// decisions left pending before lists were, which were all one list.
    ///
    /// [`Audience::sharded`]: super::membership::Audience::sharded
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sharded: bool,
}

impl MembershipEvent {
    /// The same for every delivery of this decision, and different for every move:
    /// consumers drop duplicates by it.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        // A decision left pending without its commit keeps the id its first delivery had.
        if self.commit > 0 {
            hasher.update(self.commit.to_string().as_bytes());
            hasher.update([0]);
        }
        for part in [
            self.workspace_id.as_str(),
            &self.audience_id,
            &self.external_user_id,
            &self.rule_rev.to_string(),
            &self.user_version.to_string(),
            if self.entered { "in" } else { "out" },
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..16])
    }

    /// As put on the bus: ids only, no PII.
    pub fn to_event(&self) -> super::change::ChangeEvent {
        super::change::ChangeEvent {
            source: AUDIENCE_SOURCE,
            detail_type: if self.entered {
                AUDIENCE_ENTERED
            } else {
                AUDIENCE_EXITED
            },
            detail: serde_json::json!({
                "id": self.id(),
                "workspace_id": self.workspace_id,
                "audience_id": self.audience_id,
                "external_user_id": self.external_user_id,
                "user_version": self.user_version,
                "at": super::format_millis(self.at),
                "reason": self.reason,
            }),
        }
    }
}

#[cfg(test)]
#[path = "audience_tests.rs"]
mod tests;
