use super::{Changes, ProfileField, Stamp};
use serde_json::Value;
use std::collections::BTreeMap;

/// A stored user profile with the stamp of the upsert that last set or removed each
/// field. Applying upserts is commutative and idempotent: every field ends up with
/// the value of the greatest stamp that touched it, whatever the order of delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserProfile {
    pub profile: BTreeMap<ProfileField, String>,
    pub traits: BTreeMap<String, Value>,
    /// Keyed by profile attribute (`email`, `plan`, …) or `traits.<name>`; removed
    /// fields keep their stamp so an older upsert cannot bring them back.
    pub stamps: BTreeMap<String, Stamp>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

pub(crate) fn trait_stamp_key(name: &str) -> String {
    format!("traits.{name}")
}

impl UserProfile {
    /// Applies one accepted upsert; returns whether the item must be written (a value,
    /// a stamp or a timestamp changed).
    pub fn apply(&mut self, stamp: &Stamp, changes: &Changes) -> bool {
        let mut changed = false;
        for (field, value) in &changes.profile {
            if self.claim(field.attribute().to_owned(), stamp) {
                set_or_remove(&mut self.profile, *field, value.clone());
                changed = true;
            }
        }
        for (name, value) in &changes.traits {
            if self.claim(trait_stamp_key(name), stamp) {
                set_or_remove(&mut self.traits, name.clone(), value.clone());
                changed = true;
            }
        }
        let created_at = self
            .created_at
            .map_or(stamp.accepted_at, |t| t.min(stamp.accepted_at));
        let updated_at = self
            .updated_at
            .map_or(stamp.accepted_at, |t| t.max(stamp.accepted_at));
        changed |= self.created_at != Some(created_at) || self.updated_at != Some(updated_at);
        self.created_at = Some(created_at);
        self.updated_at = Some(updated_at);
        changed
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
        Stamp {
            accepted_at: at,
            request_id: id.into(),
        }
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
            .prop_map(|(profile, traits)| Changes { profile, traits })
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
}
