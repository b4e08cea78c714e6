use super::budget::MAX_PENDING_ONCE;
use super::{trait_of_path, Changes, ProfileField, RejectedTrait, Stamp, UpsertMessage};
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
        changed |= self.apply_traits(stamp, changes);
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
    pub(super) fn overwrite(&mut self, key: &str, value: Option<Value>, stamp: &Stamp) -> bool {
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
    pub(super) fn set_once(&mut self, key: &str, value: Value, stamp: &Stamp) -> bool {
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

pub(super) fn set_or_remove<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    pub(crate) fn stamp(at: i64, id: &str) -> Stamp {
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

    pub(crate) fn custom(name: &str, value: Option<Value>) -> Changes {
        let mut changes = Changes::default();
        changes.traits.insert(name.into(), value);
        changes
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
