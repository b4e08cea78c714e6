//! A profile's custom traits within its budget (`budget`): the order an upsert's
//! traits apply in, what each costs, the traits refused (over the budget, or older than
//! the floor of folded removal stamps), and that fold.

use super::budget::{trait_cost, MAX_REJECTED_TRAITS, MAX_REMOVED_STAMPS, TRAITS_BUDGET_BYTES};
use super::profile::set_or_remove;
use super::{trait_of_path, trait_path, Changes, ProfileField, Stamp, UserProfile};
use serde_json::Value;

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
    /// Applies an upsert's custom traits, within the budget; returns whether the item
    /// must be written.
    pub(super) fn apply_traits(&mut self, stamp: &Stamp, changes: &Changes) -> bool {
        if changes.traits.is_empty() && changes.once_traits.is_empty() {
            return false;
        }
        let mut changed = false;
        let mut used = self.traits_bytes();
        for (name, value) in self.budget_order(stamp, changes) {
            changed |= self.apply_trait(name, value, stamp, &mut used);
        }
        changed |= self.fold_removal_stamps();
        changed
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::profile::tests::{custom, stamp};
    use serde_json::json;

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
}
