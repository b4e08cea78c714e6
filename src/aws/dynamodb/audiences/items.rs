//! Items of the audiences tables as the code's types, and the keys that spread a
//! workspace's writes (users over count shards and due partitions). Items are read
//! leniently: a missing or odd attribute reads as absent, never as an error, so that a
//! hand-edited or older item cannot stop an evaluation.

use super::*;

pub(super) fn audience_from_item(item: &Item) -> Option<Audience> {
    let rule_json: serde_json::Value = serde_json::from_str(get_s(item, "rule")?).ok()?;
    Some(Audience {
        audience_id: get_s(item, SORT_KEY)?.to_owned(),
        name: get_s(item, "name")?.to_owned(),
        rule: parse_rule(&rule_json).ok()?,
        rule_json,
        rule_rev: get_n(item, "rule_rev")?,
        since_rev: get_n(item, "since_rev")?,
        building: get_n(item, "building"),
        updated_at: get_n(item, "updated_at")?,
        counted: flag(item, "counted"),
        sharded: flag(item, "sharded"),
    })
}

/// A flag set only when true (absent on items written before it existed).
pub(super) fn flag(item: &Item, name: &str) -> bool {
    item.get(name).and_then(|v| v.as_bool().ok()) == Some(&true)
}

pub(super) fn due_shard(workspace_id: &str, external_user_id: &str) -> String {
    user_shard(workspace_id, external_user_id, u64::from(DUE_SHARDS)).to_string()
}

/// The key of one shard of an audience's member count.
pub(super) fn count_key(
    workspace_id: &str,
    (audience_id, since_rev): (&str, u64),
    shard: u64,
) -> Item {
    AudienceStore::key(
        format!(
            "n#{}#{since_rev}#{shard}",
            workspace_key(workspace_id, audience_id)
        ),
        COUNT,
    )
}

pub(super) fn state_item(
    workspace_id: &str,
    external_user_id: &str,
    state: &UserAudiences,
) -> Result<Item, PortError> {
    let mut item = AudienceStore::state_key(workspace_id, external_user_id);
    item.insert("rev".into(), n(state.rev));
    item.insert("user_version".into(), n(state.user_version));
    let members = state
        .members
        .iter()
        .map(|(audience_id, standing)| {
            let standing = Item::from([
                ("entered_at".to_owned(), n(standing.entered_at)),
                ("rule_rev".to_owned(), n(standing.rule_rev)),
            ]);
            (audience_id.clone(), AttributeValue::M(standing))
        })
        .collect();
    item.insert("members".into(), AttributeValue::M(members));
    if !state.pending.is_empty() {
        let pending = serde_json::to_string(&state.pending)
            .map_err(|_| PortError::Refused("pending events not encoded".into()))?;
        item.insert("pending".into(), s(pending));
    }
    if let Some(next_due) = state.next_due {
        item.insert("next_due".into(), n(next_due));
    }
    if let Some(at) = state.due_at() {
        item.insert("due_at".into(), n(at));
        item.insert(
            "due_shard".into(),
            s(due_shard(workspace_id, external_user_id)),
        );
    }
    Ok(item)
}

pub(super) fn state_from_item(item: &Item) -> UserAudiences {
    let members = item
        .get("members")
        .and_then(|m| m.as_m().ok())
        .into_iter()
        .flatten()
        .filter_map(|(audience_id, standing)| {
            let standing = standing.as_m().ok()?;
            Some((
                audience_id.clone(),
                Standing {
                    entered_at: get_n(standing, "entered_at")?,
                    rule_rev: get_n(standing, "rule_rev")?,
                },
            ))
        })
        .collect::<BTreeMap<_, _>>();
    let pending: Vec<MembershipEvent> = get_s(item, "pending")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    UserAudiences {
        rev: get_n(item, "rev").unwrap_or(0),
        user_version: get_n(item, "user_version").unwrap_or(0),
        members,
        pending,
        next_due: get_n(item, "next_due"),
        found_due: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audience::Reason;
    use crate::domain::membership::PENDING_GRACE_MS;

    #[test]
    fn a_state_item_reads_back_as_written_and_is_due_while_events_are_pending() {
        let mut state = UserAudiences {
            rev: 3,
            user_version: 11,
            members: BTreeMap::from([(
                "trials".to_owned(),
                Standing {
                    entered_at: 5,
                    rule_rev: 2,
                },
            )]),
            pending: vec![MembershipEvent {
                entered: true,
                workspace_id: "ws".into(),
                audience_id: "trials".into(),
                external_user_id: "u#1".into(),
                user_version: 7,
                rule_rev: 2,
                at: 5,
                reason: Reason::Change,
                since_rev: 1,
                commit: 3,
                sharded: true,
            }],
            next_due: Some(99),
            found_due: None,
        };
        let item = state_item("ws", "u#1", &state).unwrap();
        assert_eq!(state_from_item(&item), state);
        assert_eq!(get_n::<i64>(&item, "due_at"), Some(5 + PENDING_GRACE_MS));
        // A time task's commit stays where the task found it: the index entry unmoved.
        let found = UserAudiences {
            found_due: Some(4),
            ..state.clone()
        };
        let item = state_item("ws", "u#1", &found).unwrap();
        assert_eq!(get_n::<i64>(&item, "due_at"), Some(4));
        assert_eq!(get_s(&item, PARTITION_KEY), Some("u#ws#u#1"));
        state.pending.clear();
        let item = state_item("ws", "u#1", &state).unwrap();
        assert_eq!(get_n::<i64>(&item, "due_at"), Some(99));
        state.next_due = None;
        let item = state_item("ws", "u#1", &state).unwrap();
        assert!(!item.contains_key("due_at") && !item.contains_key("due_shard"));
        // Shards are stable and spread.
        let shards: std::collections::BTreeSet<String> = (0..2_000)
            .map(|i| due_shard("ws", &format!("u{i}")))
            .collect();
        assert_eq!(shards.len(), DUE_SHARDS as usize);
        assert!(shards
            .iter()
            .all(|s| s.parse::<u32>().is_ok_and(|s| s < DUE_SHARDS)));
        assert_eq!(due_shard("ws", "u1"), due_shard("ws", "u1"));
    }
}
