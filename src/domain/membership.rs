//! A user's memberships (contract, "Audiences"): the audiences as stored, the state one
//! user's memberships are kept in, and the decision that moves it when the user, the
//! rules or time change. Pure: the use cases read and write them through ports.

use super::audience::{MembershipEvent, Reason, Rule};
use super::{read_fields, UserProfile};
use serde_json::Value;
use std::collections::BTreeMap;

/// How long a removed member's `gone` list entry is kept: far longer than an invocation
/// that could still carry out an older decision lives (Lambda's timeout is 15 minutes
/// at most), so that a decision carried out late never undoes a newer one.
pub const GONE_KEPT_SECS: i64 = 24 * 60 * 60;

/// An audience as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Audience {
    pub audience_id: String,
    pub name: String,
    /// The rule as defined (what reads show), and parsed.
    pub rule_json: Value,
    pub rule: Rule,
    /// The workspace's definitions revision this rule was written at.
    pub rule_rev: u64,
    /// The revision this audience started at: standings from before (an audience of
    /// the same id, deleted) are not its members.
    pub since_rev: u64,
    /// Users the build of `rule_rev` has looked at; `None` once it is done.
    pub building: Option<u64>,
    pub updated_at: i64,
    /// Its member count is kept beside its member list since it started; an audience
    /// that started before counts were kept is counted by reading its list.
    pub counted: bool,
    /// Its member list (and count) is spread over shards by user since it started, so
    /// that no one key takes every change of a large audience; an audience that started
    /// before keeps its one list until defined anew.
    pub sharded: bool,
}

/// A workspace's audiences and the revision of its definitions, which every define
/// and delete moves on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definitions {
    pub revision: u64,
    /// In id order.
    pub audiences: Vec<Audience>,
}

/// A user's standing in one audience it is a member of.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// When it entered (epoch ms).
    pub entered_at: i64,
    /// The audience's revision when it entered.
    pub rule_rev: u64,
}

/// One user's memberships: the audiences it is in, the user version they were last
/// decided at, the decisions not yet carried out (member-list entries to write and
/// events to put on the bus: an outbox), and when a time-relative rule will next
/// change its mind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserAudiences {
    /// Optimistic lock: 0 when nothing is stored yet.
    pub rev: u64,
    /// The user version of the latest decision: an older version never decides again.
    pub user_version: u64,
    pub members: BTreeMap<String, Standing>,
    /// The decisions of commit `rev` not yet carried out.
    pub pending: Vec<MembershipEvent>,
    pub next_due: Option<i64>,
    /// The instant a time task found the user due at, kept as its due instant while the
    /// decisions of that settle are in flight (not stored): the due index entry then
    /// moves once per settle, to `next_due` when they are cleared, instead of twice.
    pub found_due: Option<i64>,
}

/// How long a committed decision may wait to be carried out by the evaluation that
/// made it before a tick carries it out instead. It takes milliseconds; a tick sooner
/// would only race it. Longer than a tick's horizon (55 s), so that no tick waits for
/// a user whose decisions are in flight: only those left by a crash fall due.
pub const PENDING_GRACE_MS: i64 = 60_000;

impl UserAudiences {
    /// When a tick must look at the user: its pending decisions once their grace is
    /// over (or, from a time task, at the instant it found the user due: already past,
    /// and no other task pages that partition until the next tick), else the next
    /// instant a rule changes its mind (`None`: never).
    pub fn due_at(&self) -> Option<i64> {
        let stranded = self
            .pending
            .first()
            .map(|decision| decision.at + PENDING_GRACE_MS)
            .map(|graced| self.found_due.map_or(graced, |found| found.min(graced)));
        stranded.or(self.next_due)
    }
}

/// The user's standing in this audience, if it is a member (of this audience, not of
/// a deleted one of the same id).
pub fn member_of<'a>(state: &'a UserAudiences, audience: &Audience) -> Option<&'a Standing> {
    state
        .members
        .get(&audience.audience_id)
        .filter(|standing| standing.rule_rev >= audience.since_rev)
}

/// A decision to make: about whom, at which user version, and why.
pub struct Decision<'a> {
    pub workspace_id: &'a str,
    pub external_user_id: &'a str,
    /// The user's profile as stored; `None`: no item (erased, or never written).
    pub profile: Option<&'a UserProfile>,
    /// The version the decision is made at (events name it).
    pub version: u64,
    pub reason: Reason,
}

/// What one user's memberships must become under the rules at `now_ms`: the next
/// state, its flips pending (one event each, all with the commit's id part), or `None`
/// if nothing changes.
pub fn decide(
    subject: &Decision,
    definitions: &Definitions,
    state: &UserAudiences,
    now_ms: i64,
) -> Option<UserAudiences> {
    let profile = subject.profile.filter(|p| p.exists());
    let fields = profile.map(read_fields).unwrap_or_default();
    let version = subject.version;
    let mut next = UserAudiences {
        rev: state.rev + 1,
        user_version: version,
        members: state.members.clone(),
        pending: Vec::new(),
        next_due: None,
        found_due: (subject.reason == Reason::Time)
            .then(|| state.due_at())
            .flatten(),
    };
    for audience in &definitions.audiences {
        let was = member_of(state, audience).is_some();
        let is = profile.is_some() && audience.rule.matches(&fields, now_ms);
        if profile.is_some() {
            let due = audience.rule.next_change_after(&fields, now_ms);
            next.next_due = next.next_due.into_iter().chain(due).min();
        }
        if was == is {
            continue;
        }
        if is {
            let standing = Standing {
                entered_at: now_ms,
                rule_rev: audience.rule_rev,
            };
            next.members.insert(audience.audience_id.clone(), standing);
        } else {
            next.members.remove(&audience.audience_id);
        }
        next.pending.push(MembershipEvent {
            entered: is,
            workspace_id: subject.workspace_id.to_owned(),
            audience_id: audience.audience_id.clone(),
            external_user_id: subject.external_user_id.to_owned(),
            user_version: version,
            rule_rev: audience.rule_rev,
            since_rev: audience.since_rev,
            at: now_ms,
            reason: if profile.is_none() {
                Reason::Erase
            } else {
                subject.reason
            },
            commit: next.rev,
            sharded: audience.sharded,
        });
    }
    (!next.pending.is_empty() || next.next_due != state.next_due).then_some(next)
}
