use super::budget::{
    trait_cost, MAX_PENDING_ONCE, MAX_REJECTED_TRAITS, MAX_REMOVED_STAMPS, TRAITS_BUDGET_BYTES,
};
use super::{trait_of_path, trait_path, Changes, ProfileField, Stamp, UpsertMessage};
use serde_json::Value;
use std::collections::BTreeMap;

/// The version a write gives a user's item: one past the version read. A new item
/// (read as 0) starts from the time in ms, so that a user created again after its
/// tombstone expired keeps counting past its earlier life: change events and audience
/// decisions are ordered by version.
pub fn next_version(read: u64, now_ms: i64) -> u64 {
    if read == 0 {
        u64::try_from(now_ms).unwrap_or(1).max(1)
    } else {
        read + 1
    }
}

/// A stored user profile with the stamp of the upsert that last set or removed each
/// field. It equals the accepted writes applied one by one in stamp order — `traits`
/// and `email` overwrite, `null` removes, `set_once` sets what is absent at that point,
/// an erasure removes everything — whatever order and however many times they are
/// delivered. Per field it keeps the last overwrite's stamp and the `set_once` writes
/// stamped after it (`once`): the first of them is the value when that overwrite was a
/// removal, the later ones wait for a removal stamped between them that may still
/// arrive. Documented exceptions keep the item bounded: a custom trait over the budget
/// is refused, a set older than the `floor` of folded removal stamps is refused as too
/// old (both listed in `rejected`), and a field keeps at most `MAX_PENDING_ONCE`
/// `set_once` writes (the earliest).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserProfile {
    pub profile: BTreeMap<ProfileField, String>,
    pub traits: BTreeMap<String, Value>,
    /// Keyed by profile attribute (`email`, `plan`, …) or `traits.<name>`; removed
    /// fields keep their stamp so an older upsert cannot bring them back.
    pub stamps: BTreeMap<String, Stamp>,
    /// Custom-trait removal stamps at or below this one were folded away: a custom
    /// trait without a stamp of its own may have been removed up to here.
    pub floor: Option<Stamp>,
    /// Traits that were not stored, most recent first.
    pub rejected: Vec<RejectedTrait>,
    /// The latest erasure (`DELETE`): everything stamped at or before it is gone, and
    /// stays gone whatever arrives later.
    pub erased: Option<Stamp>,
    /// `set_once` writes by field key (as in `stamps`), each stamped after the field's
    /// last overwrite.
    pub once: BTreeMap<String, OnceWrites>,
    /// The greatest stamp of the upserts applied: whether one came after an erasure
    /// when their times tie to the millisecond.
    pub last_write: Option<Stamp>,
    /// The earliest and latest time (`Stamp::at`: at the source, else accepted) of the
    /// writes that made the user as it is.
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// The `set_once` writes of one field that the order of writes may still need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnceWrites {
    /// The field's value is the first one's: its last overwrite, if any, was a removal.
    pub applies: bool,
    /// Earliest first, at most `MAX_PENDING_ONCE`.
    pub writes: Vec<OnceWrite>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnceWrite {
    pub stamp: Stamp,
    /// Known fields hold a string.
    pub value: Value,
}

/// What an upsert does to one custom trait.
#[derive(Clone, Copy)]
enum TraitWrite<'a> {
    Set(&'a Value),
    Remove,
    Once(&'a Value),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTrait {
    pub name: String,
    pub reason: RejectReason,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Storing it would pass `TRAITS_BUDGET_BYTES`.
    ProfileBudget,
    /// Older than the profile's floor: it might undo a removal that was folded away.
    TooOld,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ProfileBudget => "profile_budget",
            RejectReason::TooOld => "too_old",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [RejectReason::ProfileBudget, RejectReason::TooOld]
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

impl UserProfile {
    /// Applies one accepted message, upsert or erasure; returns whether the item must
    /// be written.
    pub fn apply_message(&mut self, message: &UpsertMessage) -> bool {
        if message.erase {
            self.erase(&message.stamp)
        } else {
            self.apply(&message.stamp, &message.changes)
        }
    }

    /// Whether reads see the user: something was written and not erased since.
    pub fn exists(&self) -> bool {
        self.created_at.is_some()
    }

    /// Applies one accepted upsert; returns whether the item must be written (a value,
    /// a stamp, a rejection or a timestamp changed).
    pub fn apply(&mut self, stamp: &Stamp, changes: &Changes) -> bool {
        if self.erased.as_ref().is_some_and(|erased| stamp <= erased) {
            return false;
        }
        let mut changed = false;
        for (field, value) in &changes.profile {
            let value = value.clone().map(Value::String);
            changed |= self.overwrite(field.attribute(), value, stamp);
        }
        for (field, value) in &changes.once_profile {
            changed |= self.set_once(field.attribute(), Value::String(value.clone()), stamp);
        }
        if !changes.traits.is_empty() || !changes.once_traits.is_empty() {
            let mut used = self.traits_bytes();
            for (name, value) in self.budget_order(stamp, changes) {
                changed |= self.apply_trait(name, value, stamp, &mut used);
            }
            changed |= self.fold_removal_stamps();
        }
        if self.last_write.as_ref().is_none_or(|last| last < stamp) {
            self.last_write = Some(stamp.clone());
            changed = true;
        }
        let at = stamp.at();
        let created_at = self.created_at.map_or(at, |t| t.min(at));
        let updated_at = self.updated_at.map_or(at, |t| t.max(at));
        changed |= self.created_at != Some(created_at) || self.updated_at != Some(updated_at);
        self.created_at = Some(created_at);
        self.updated_at = Some(updated_at);
        changed
    }

    /// The value of a field key (`plan`, `traits.color`), known fields as strings.
    fn value_of(&self, key: &str) -> Option<Value> {
        match trait_of_path(key) {
            Some(name) => self.traits.get(name).cloned(),
            None => ProfileField::from_attribute(key)
                .and_then(|field| self.profile.get(&field))
                .map(|text| Value::String(text.clone())),
        }
    }

    fn set_value(&mut self, key: &str, value: Option<Value>) {
        match trait_of_path(key) {
            Some(name) => set_or_remove(&mut self.traits, name.to_owned(), value),
            None => {
                if let Some(field) = ProfileField::from_attribute(key) {
                    let text = value.and_then(|v| v.as_str().map(str::to_owned));
                    set_or_remove(&mut self.profile, field, text);
                }
            }
        }
    }

    /// A set (`Some`) or removal (`None`) of a field, if newer than its last one. The
    /// `set_once` writes it passes are no longer needed; after a removal, the first
    /// one stamped after it is the value.
    fn overwrite(&mut self, key: &str, value: Option<Value>, stamp: &Stamp) -> bool {
        if !self.claim(key.to_owned(), stamp) {
            return false;
        }
        let once = self.once.remove(key).unwrap_or_default();
        let later: Vec<OnceWrite> = once
            .writes
            .into_iter()
            .filter(|w| w.stamp > *stamp)
            .collect();
        let value = match value {
            Some(value) => {
                self.keep_once(key, false, later);
                Some(value)
            }
            None => {
                let first = later.first().map(|w| w.value.clone());
                self.keep_once(key, first.is_some(), later);
                first
            }
        };
        self.set_value(key, value);
        true
    }

    /// A `set_once` of a field: the value if the field has none at `stamp`.
    fn set_once(&mut self, key: &str, value: Value, stamp: &Stamp) -> bool {
        let last_overwrite = self.stamps.get(key);
        if last_overwrite.is_some_and(|last| last >= stamp) {
            // A later set or removal decides the field from its stamp on.
            return false;
        }
        let mut once = self.once.remove(key).unwrap_or_default();
        if once.writes.iter().any(|w| w.stamp == *stamp) {
            self.once.insert(key.to_owned(), once);
            return false;
        }
        // The value is a set's when the last overwrite was a set.
        let set_before = last_overwrite.is_some() && !once.applies && self.value_of(key).is_some();
        let at = once.writes.partition_point(|w| w.stamp < *stamp);
        once.writes.insert(
            at,
            OnceWrite {
                stamp: stamp.clone(),
                value: value.clone(),
            },
        );
        once.writes.truncate(MAX_PENDING_ONCE);
        let changed = at < MAX_PENDING_ONCE;
        if !set_before && at == 0 {
            once.applies = true;
            self.set_value(key, Some(value));
        }
        self.keep_once(key, once.applies, once.writes);
        changed
    }

    fn keep_once(&mut self, key: &str, applies: bool, writes: Vec<OnceWrite>) {
        if !writes.is_empty() {
            self.once
                .insert(key.to_owned(), OnceWrites { applies, writes });
        }
    }

    /// Erases everything written at or before `stamp`: values, their stamps (the
    /// erasure's stands for them all), rejections, the folded floor. Writes stamped
    /// after it survive, in any delivery order. `created_at` then is the earliest
    /// surviving write that is known (exact unless later upserts were reordered).
    pub fn erase(&mut self, stamp: &Stamp) -> bool {
        if self.erased.as_ref().is_some_and(|erased| erased >= stamp) {
            return false;
        }
        self.erased = Some(stamp.clone());
        let written_before: Vec<String> = self
            .stamps
            .iter()
            .filter(|(_, written)| *written <= stamp)
            .map(|(key, _)| key.clone())
            .collect();
        for key in written_before {
            self.stamps.remove(&key);
            self.set_value(&key, None);
        }
        // As a removal of every field: the first set_once stamped after it is the value.
        let keys: Vec<String> = self.once.keys().cloned().collect();
        for key in keys {
            let once = self.once.remove(&key).unwrap_or_default();
            let later: Vec<OnceWrite> = once
                .writes
                .into_iter()
                .filter(|w| w.stamp > *stamp)
                .collect();
            let decided_later = self.stamps.contains_key(&key);
            if !decided_later {
                self.set_value(&key, later.first().map(|w| w.value.clone()));
            }
            let applies = if decided_later {
                once.applies
            } else {
                !later.is_empty()
            };
            self.keep_once(&key, applies, later);
        }
        self.rejected.retain(|r| r.stamp > *stamp);
        if self.floor.as_ref().is_some_and(|floor| floor <= stamp) {
            self.floor = None;
        }
        if self.last_write.as_ref().is_some_and(|last| last <= stamp) {
            self.last_write = None;
        }
        let after = |millis: &i64| *millis > stamp.at();
        if !self.created_at.as_ref().is_some_and(after) {
            // Surviving fields were written after the erasure, and so was any upsert
            // whose time is past it: the earliest of them recreated the user.
            let surviving = self.stamps.values().map(Stamp::at);
            let waiting = self
                .once
                .values()
                .flat_map(|o| &o.writes)
                .map(|w| w.stamp.at());
            let last = self.last_write.as_ref().map(Stamp::at);
            self.created_at = surviving.chain(waiting).chain(last).min();
        }
        if self.created_at.is_none() {
            self.updated_at = None;
        }
        true
    }

    /// An upsert's custom traits in the order that frees budget before spending it:
    /// removals, then the rest by how much they grow the profile. So whether a trait
    /// fits does not depend on the names' order, only on what the whole upsert leaves.
    fn budget_order<'a>(
        &self,
        stamp: &Stamp,
        changes: &'a Changes,
    ) -> Vec<(&'a str, TraitWrite<'a>)> {
        let overwrites = changes.traits.iter().map(|(name, value)| match value {
            Some(value) => (name, TraitWrite::Set(value)),
            None => (name, TraitWrite::Remove),
        });
        let once = changes
            .once_traits
            .iter()
            .map(|(name, value)| (name, TraitWrite::Once(value)));
        let mut ordered: Vec<(i64, &str, TraitWrite)> = overwrites
            .chain(once)
            .map(|(name, write)| {
                let growth = match write {
                    TraitWrite::Remove => i64::MIN,
                    TraitWrite::Set(value) => {
                        let current = self
                            .traits
                            .get(name)
                            .zip(self.stamps.get(&trait_path(name)));
                        let freed =
                            current.map_or(0, |(old, old_stamp)| trait_cost(name, old, old_stamp));
                        trait_cost(name, value, stamp) as i64 - freed as i64
                    }
                    TraitWrite::Once(value) => trait_cost(name, value, stamp) as i64,
                };
                (growth, name.as_str(), write)
            })
            .collect();
        ordered.sort_by_key(|(growth, name, _)| (*growth, *name));
        ordered
            .into_iter()
            .map(|(_, name, write)| (name, write))
            .collect()
    }

    /// Bytes of the budget the custom traits use: each value and the `set_once` writes
    /// kept for it, each with its stamp.
    pub fn traits_bytes(&self) -> usize {
        let waiting = self.once.keys().filter_map(|key| trait_of_path(key));
        let names: std::collections::BTreeSet<&str> = self
            .traits
            .keys()
            .map(String::as_str)
            .chain(waiting)
            .collect();
        names.into_iter().map(|name| self.trait_bytes(name)).sum()
    }

    /// What one custom trait costs against the budget.
    fn trait_bytes(&self, name: &str) -> usize {
        let key = trait_path(name);
        let once = self.once.get(&key);
        // A value from a set_once is counted with that write.
        let value = match (self.traits.get(name), self.stamps.get(&key)) {
            (Some(value), Some(stamp)) if !once.is_some_and(|o| o.applies) => {
                trait_cost(name, value, stamp)
            }
            _ => 0,
        };
        let waiting: usize = once
            .into_iter()
            .flat_map(|o| &o.writes)
            .map(|w| trait_cost(name, &w.value, &w.stamp))
            .sum();
        value + waiting
    }

    fn apply_trait(
        &mut self,
        name: &str,
        write: TraitWrite,
        stamp: &Stamp,
        used: &mut usize,
    ) -> bool {
        let key = trait_path(name);
        let below_floor = self.floor.as_ref().is_some_and(|floor| stamp <= floor);
        if below_floor && !self.stamps.contains_key(&key) {
            // It might undo a removal folded away; an old removal changes nothing anyway.
            return !matches!(write, TraitWrite::Remove)
                && self.reject(name, RejectReason::TooOld, stamp);
        }
        let before = (
            self.traits.get(name).cloned(),
            self.stamps.get(&key).cloned(),
            self.once.get(&key).cloned(),
        );
        let old_cost = self.trait_bytes(name);
        let changed = match write {
            TraitWrite::Set(value) => self.overwrite(&key, Some(value.clone()), stamp),
            TraitWrite::Remove => self.overwrite(&key, None, stamp),
            TraitWrite::Once(value) => self.set_once(&key, value.clone(), stamp),
        };
        if !changed {
            return false;
        }
        let new_cost = self.trait_bytes(name);
        if *used - old_cost + new_cost > TRAITS_BUDGET_BYTES {
            let (value, last, once) = before;
            set_or_remove(&mut self.traits, name.to_owned(), value);
            set_or_remove(&mut self.stamps, key.clone(), last);
            set_or_remove(&mut self.once, key, once);
            return self.reject(name, RejectReason::ProfileBudget, stamp);
        }
        *used = *used - old_cost + new_cost;
        self.rejected.retain(|r| r.name != name || r.stamp > *stamp);
        true
    }

    /// Lists a trait as not stored, unless a newer refusal of it is listed already.
    fn reject(&mut self, name: &str, reason: RejectReason, stamp: &Stamp) -> bool {
        if self
            .rejected
            .iter()
            .any(|r| r.name == name && r.stamp >= *stamp)
        {
            return false;
        }
        self.rejected.retain(|r| r.name != name);
        let at = self.rejected.partition_point(|r| r.stamp > *stamp);
        if at >= MAX_REJECTED_TRAITS {
            return false;
        }
        self.rejected.insert(
            at,
            RejectedTrait {
                name: name.to_owned(),
                reason,
                stamp: stamp.clone(),
            },
        );
        self.rejected.truncate(MAX_REJECTED_TRAITS);
        true
    }

    /// Keeps at most `MAX_REMOVED_STAMPS` stamps of removed custom traits: the oldest
    /// fold into `floor`.
    fn fold_removal_stamps(&mut self) -> bool {
        let known = ProfileField::ALL
            .iter()
            .filter(|field| self.stamps.contains_key(field.attribute()))
            .count();
        if self.stamps.len() <= self.traits.len() + known + MAX_REMOVED_STAMPS {
            return false;
        }
        let mut removed: Vec<(Stamp, String)> = self
            .stamps
            .iter()
            .filter(|(key, _)| {
                trait_of_path(key).is_some_and(|name| !self.traits.contains_key(name))
            })
            .map(|(key, stamp)| (stamp.clone(), key.clone()))
            .collect();
        if removed.len() <= MAX_REMOVED_STAMPS {
            return false;
        }
        removed.sort();
        let excess = removed.len() - MAX_REMOVED_STAMPS;
        for (stamp, key) in removed.into_iter().take(excess) {
            self.stamps.remove(&key);
            if self.floor.as_ref().is_none_or(|floor| stamp > *floor) {
                self.floor = Some(stamp);
            }
        }
        true
    }

    /// Records `stamp` as the field's latest writer if it is newer than the current one.
    fn claim(&mut self, key: String, stamp: &Stamp) -> bool {
        match self.stamps.get(&key) {
            Some(current) if current >= stamp => false,
            _ => {
                self.stamps.insert(key, stamp.clone());
                true
            }
        }
    }
}

fn set_or_remove<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn stamp(at: i64, id: &str) -> Stamp {
        Stamp::new(at, id)
    }

    fn plan(value: Option<&str>) -> Changes {
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Plan, value.map(str::to_owned));
        changes
    }

    #[test]
    fn older_upsert_never_overwrites_newer_field() {
        let mut user = UserProfile::default();
        assert!(user.apply(&stamp(2, "b"), &plan(Some("pro"))));
        user.apply(&stamp(1, "a"), &plan(Some("trial")));
        assert_eq!(user.profile[&ProfileField::Plan], "pro");
        assert_eq!((user.created_at, user.updated_at), (Some(1), Some(2)));
    }

    #[test]
    fn request_id_breaks_ties_between_equal_times() {
        let mut user = UserProfile::default();
        user.apply(&stamp(5, "b"), &plan(Some("pro")));
        user.apply(&stamp(5, "a"), &plan(Some("trial")));
        assert_eq!(user.profile[&ProfileField::Plan], "pro");
    }

    #[test]
    fn removal_is_remembered_against_older_sets() {
        let mut user = UserProfile::default();
        user.apply(&stamp(3, "c"), &plan(None));
        user.apply(&stamp(1, "a"), &plan(Some("trial")));
        assert!(!user.profile.contains_key(&ProfileField::Plan));
    }

    #[test]
    fn duplicate_delivery_changes_nothing() {
        let mut user = UserProfile::default();
        let mut changes = plan(Some("pro"));
        changes.traits.insert("color".into(), Some(json!("teal")));
        assert!(user.apply(&stamp(1, "a"), &changes));
        assert!(!user.apply(&stamp(1, "a"), &changes));
    }

    #[test]
    fn traits_merge_key_by_key() {
        let mut user = UserProfile::default();
        let mut first = Changes::default();
        first.traits.insert("a".into(), Some(json!(1)));
        first.traits.insert("b".into(), Some(json!({"x": 1})));
        let mut second = Changes::default();
        second.traits.insert("b".into(), Some(json!({"y": 2})));
        user.apply(&stamp(1, "a"), &first);
        user.apply(&stamp(2, "b"), &second);
        assert_eq!(user.traits["a"], json!(1));
        assert_eq!(
            user.traits["b"],
            json!({"y": 2}),
            "objects are replaced, not deep-merged"
        );
    }

    fn custom(name: &str, value: Option<Value>) -> Changes {
        let mut changes = Changes::default();
        changes.traits.insert(name.into(), value);
        changes
    }

    fn big(bytes: usize) -> Value {
        json!("x".repeat(bytes))
    }

    #[test]
    fn trait_over_the_budget_is_rejected_and_the_rest_of_the_upsert_applied() {
        let mut user = UserProfile::default();
        for i in 0..8 {
            user.apply(&stamp(i, "a"), &custom(&format!("t{i}"), Some(big(31_000))));
        }
        let mut changes = custom("t8", Some(big(31_000)));
        changes
            .profile
            .insert(ProfileField::Plan, Some("pro".into()));
        assert!(user.apply(&stamp(10, "b"), &changes));
        assert_eq!(user.profile[&ProfileField::Plan], "pro");
        assert!(!user.traits.contains_key("t8"));
        assert_eq!(user.rejected.len(), 1);
        assert_eq!(user.rejected[0].reason, RejectReason::ProfileBudget);
        assert!(user.traits_bytes() <= TRAITS_BUDGET_BYTES);
        // An older store of that name keeps the newer refusal listed…
        user.apply(&stamp(9, "c"), &custom("t8", Some(json!(1))));
        assert_eq!(user.traits["t8"], json!(1));
        assert_eq!(user.rejected.len(), 1);
        // …a newer one clears it.
        user.apply(&stamp(11, "d"), &custom("t8", Some(json!(2))));
        assert!(user.rejected.is_empty());
        // Removing a trait frees its share of the budget.
        user.apply(&stamp(12, "e"), &custom("t0", None));
        assert!(user.apply(&stamp(13, "f"), &custom("t9", Some(big(31_000)))));
        assert!(user.traits.contains_key("t9"));
    }

    #[test]
    fn an_upsert_that_frees_room_and_spends_it_fits_whatever_the_names() {
        let mut user = UserProfile::default();
        for i in 0..8 {
            user.apply(&stamp(i, "a"), &custom(&format!("z{i}"), Some(big(31_000))));
        }
        // `a` sorts before `z0`, whose removal makes the room `a` needs.
        let mut swap = custom("a", Some(big(31_000)));
        swap.traits.insert("z0".into(), None);
        user.apply(&stamp(10, "b"), &swap);
        assert!(user.traits.contains_key("a") && !user.traits.contains_key("z0"));
        assert!(user.rejected.is_empty());
    }

    #[test]
    fn rejected_traits_are_bounded_most_recent_first() {
        let mut user = UserProfile::default();
        user.apply(
            &stamp(0, "a"),
            &custom("fill", Some(big(TRAITS_BUDGET_BYTES - 200))),
        );
        for i in 1..=40 {
            user.apply(&stamp(i, "b"), &custom(&format!("r{i}"), Some(big(1_000))));
        }
        assert_eq!(user.rejected.len(), MAX_REJECTED_TRAITS);
        assert_eq!(user.rejected[0].name, "r40");
        assert!(user.rejected.windows(2).all(|w| w[0].stamp > w[1].stamp));
    }

    #[test]
    fn removal_stamps_are_bounded_and_older_sets_are_refused_as_too_old() {
        let mut user = UserProfile::default();
        for i in 0..1_000 {
            let name = format!("churn{i}");
            user.apply(&stamp(2 * i, "a"), &custom(&name, Some(json!(i))));
            user.apply(&stamp(2 * i + 1, "a"), &custom(&name, None));
        }
        assert!(user.traits.is_empty());
        assert!(
            user.stamps.len() <= MAX_REMOVED_STAMPS,
            "{}",
            user.stamps.len()
        );
        let floor = user.floor.clone().expect("a floor");
        // A set older than the floor cannot know whether its trait was removed since.
        assert!(user.apply(&stamp(5, "late"), &custom("churn2", Some(json!("back")))));
        assert!(!user.traits.contains_key("churn2"));
        assert_eq!(user.rejected[0].reason, RejectReason::TooOld);
        // Newer sets, and names with a stamp of their own, apply as always.
        user.apply(
            &stamp(floor.accepted_at + 10_000, "new"),
            &custom("fresh", Some(json!(1))),
        );
        assert_eq!(user.traits["fresh"], json!(1));
        user.apply(
            &stamp(1_990, "b"),
            &custom("churn999", Some(json!("stale"))),
        );
        assert!(
            !user.traits.contains_key("churn999"),
            "its removal stamp is kept"
        );
    }

    fn arb_changes() -> impl Strategy<Value = Changes> {
        let value = prop_oneof![Just(None), (0..4u8).prop_map(|v| Some(v.to_string()))];
        let trait_value = prop_oneof![Just(None), (0..4i64).prop_map(|v| Some(json!(v)))];
        (
            proptest::collection::btree_map(
                proptest::sample::select(ProfileField::ALL.to_vec()),
                value,
                0..4,
            ),
            proptest::collection::btree_map("[abc]", trait_value, 0..3),
        )
            .prop_map(|(profile, traits)| Changes {
                profile,
                traits,
                ..Changes::default()
            })
    }

    proptest! {
        #[test]
        fn any_delivery_order_with_duplicates_converges_to_in_order_result(
            upserts in proptest::collection::vec((0..6i64, arb_changes()), 1..12),
            order_seed in proptest::collection::vec(any::<proptest::sample::Index>(), 1..30),
        ) {
            let stamped: Vec<(Stamp, Changes)> = upserts
                .into_iter()
                .enumerate()
                .map(|(i, (at, changes))| (stamp(at, &format!("req-{i:02}")), changes))
                .collect();

            let mut in_order = stamped.clone();
            in_order.sort_by(|a, b| a.0.cmp(&b.0));
            let mut expected = UserProfile::default();
            for (s, c) in &in_order {
                expected.apply(s, c);
            }

            // Every upsert at least once, plus random duplicates, in a random order.
            let mut deliveries: Vec<&(Stamp, Changes)> = stamped.iter().collect();
            deliveries.extend(order_seed.iter().map(|i| i.get(&stamped)));
            let len = deliveries.len();
            for (n, i) in order_seed.iter().enumerate() {
                deliveries.swap(n % len, i.index(len));
            }
            let mut actual = UserProfile::default();
            for (s, c) in deliveries {
                actual.apply(s, c);
            }
            prop_assert_eq!(actual, expected);
        }
    }

    fn message(at: i64, id: &str, changes: Option<Changes>) -> UpsertMessage {
        UpsertMessage {
            version: crate::domain::MESSAGE_VERSION,
            workspace_id: "ws".into(),
            external_user_id: "u".into(),
            stamp: stamp(at, id),
            erase: changes.is_none(),
            changes: changes.unwrap_or_default(),
        }
    }

    #[test]
    fn an_erasure_removes_what_came_before_in_any_order() {
        let set = message(1, "a", Some(plan(Some("pro"))));
        let erase = message(2, "b", None);
        let late = message(3, "c", Some(custom("color", Some(json!("teal")))));
        for order in [
            [&set, &erase, &late],
            [&late, &erase, &set],
            [&erase, &set, &late],
        ] {
            let mut user = UserProfile::default();
            for m in order {
                user.apply_message(m);
            }
            assert!(!user.profile.contains_key(&ProfileField::Plan), "{order:?}");
            assert_eq!(user.traits["color"], json!("teal"));
            assert_eq!(user.created_at, Some(3), "recreated by the later upsert");
            assert!(user.stamps.values().all(|s| s.accepted_at > 2));
        }
        let mut gone = UserProfile::default();
        gone.apply_message(&set);
        assert!(gone.apply_message(&erase));
        assert!(!gone.exists() && gone.traits.is_empty() && gone.stamps.is_empty());
        assert!(!gone.apply_message(&set), "an older upsert changes nothing");
        assert!(!gone.apply_message(&erase), "erasing twice changes nothing");
    }

    fn arb_event() -> impl Strategy<Value = Option<Changes>> {
        prop_oneof![4 => arb_changes().prop_map(Some), 1 => Just(None)]
    }

    proptest! {
        #[test]
        fn upserts_and_erasures_in_any_order_with_duplicates_converge_to_in_order_result(
            events in proptest::collection::vec(arb_event(), 1..12),
            order_seed in proptest::collection::vec(any::<proptest::sample::Index>(), 1..30),
        ) {
            // Distinct times: with equal milliseconds an empty upsert and an erasure
            // would tie on updated_at (documented in `erase`).
            let messages: Vec<UpsertMessage> = events
                .into_iter()
                .enumerate()
                .map(|(i, changes)| message(10 + i as i64, &format!("req-{i:02}"), changes))
                .collect();
            let mut expected = UserProfile::default();
            for m in &messages {
                expected.apply_message(m);
            }
            let mut deliveries: Vec<&UpsertMessage> = messages.iter().collect();
            deliveries.extend(order_seed.iter().map(|i| i.get(&messages)));
            let len = deliveries.len();
            for (n, i) in order_seed.iter().enumerate() {
                deliveries.swap(n % len, i.index(len));
            }
            let mut actual = UserProfile::default();
            for m in deliveries {
                actual.apply_message(m);
            }
            // created_at may differ when later upserts were reordered around an
            // erasure (documented); everything else must be equal.
            prop_assert_eq!(actual.exists(), expected.exists());
            actual.created_at = expected.created_at;
            prop_assert_eq!(actual, expected);
        }
    }
}
