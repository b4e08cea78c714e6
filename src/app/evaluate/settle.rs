//! The commit loop: users settled together, each decided and committed with a
//! conditional write, moved rules noticed, a user that keeps losing the race left for
//! its retry.

use super::*;
use futures::future::{select, Either, Fuse, FutureExt};
use futures::stream::FuturesUnordered;

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// Settles users together: each one's commit, then every commit's decisions carried
    /// out at once (one bus call per ten events, not one per user), then a check per
    /// workspace that its rules did not move meanwhile: if they did, its users are
    /// decided again under them (a build that passed them before their commits landed
    /// would not).
    pub(super) async fn settle_all<'a>(
        &self,
        subjects: Vec<Subject<'a>>,
        mut definitions: HashMap<&'a str, Arc<Definitions>>,
        now: &(impl Fn() -> i64 + Sync),
    ) -> Outcomes {
        let mut outcomes = Vec::with_capacity(subjects.len());
        let mut round: Vec<(Subject, usize)> =
            subjects.into_iter().map(|subject| (subject, 0)).collect();
        for attempt in 1..=COMMIT_ATTEMPTS {
            let settling = round.into_iter().map(|(mut subject, put)| {
                let rules = definitions[subject.workspace_id].clone();
                async move {
                    let settled = self.settle(&mut subject, rules, now).await;
                    (subject, put, settled)
                }
            });
            let settled: Vec<_> = stream::iter(settling)
                .buffer_unordered(SETTLING_LANES)
                .collect()
                .await;
            let mut committed = Vec::new();
            for (subject, put, settled) in settled {
                match settled {
                    Ok((carried, Some(state))) => committed.push((subject, put + carried, state)),
                    Ok((carried, None)) => outcomes.push((subject.index, Ok(put + carried))),
                    Err(err) => outcomes.push((subject.index, Err(err))),
                }
            }
            let states: Vec<_> = committed
                .iter()
                .map(|(s, _, state)| (s.workspace_id, s.external_user_id, state))
                .collect();
            let (carried, moved) = tokio::join!(
                self.carry_out_all(&states),
                self.moved_rules(
                    committed.iter().map(|(s, _, _)| s.workspace_id),
                    &definitions
                )
            );
            round = Vec::new();
            for ((subject, put, _), carried) in committed.into_iter().zip(carried) {
                match (carried, moved.get(subject.workspace_id)) {
                    (Err(err), _) => outcomes.push((subject.index, Err(err))),
                    (_, Some(Err(err))) => outcomes.push((subject.index, Err(err.clone().into()))),
                    (Ok(carried), Some(Ok(_))) if attempt < COMMIT_ATTEMPTS => {
                        round.push((subject, put + carried))
                    }
                    (Ok(_), Some(Ok(_))) => outcomes.push((subject.index, Err(contended()))),
                    (Ok(carried), None) => outcomes.push((subject.index, Ok(put + carried))),
                }
            }
            for (workspace_id, found) in moved {
                if let Ok(found) = found {
                    definitions.insert(workspace_id, found);
                }
            }
            if round.is_empty() {
                break;
            }
        }
        outcomes
    }

    /// The workspaces among `workspaces` whose rules moved from `definitions`, each
    /// with its rules now (or why they could not be read).
    pub(super) async fn moved_rules<'a>(
        &self,
        workspaces: impl Iterator<Item = &'a str>,
        definitions: &HashMap<&'a str, Arc<Definitions>>,
    ) -> HashMap<&'a str, Result<Arc<Definitions>, PortError>> {
        let workspaces: std::collections::BTreeSet<&str> = workspaces.collect();
        let checks = workspaces.into_iter().map(|workspace_id| async move {
            match self.store.revision(workspace_id).await {
                Ok(revision) if revision == definitions[workspace_id].revision => None,
                Ok(revision) => Some((workspace_id, self.rules_at(workspace_id, revision).await)),
                Err(err) => Some((workspace_id, Err(err))),
            }
        });
        stream::iter(checks)
            .buffer_unordered(SETTLING_LANES)
            .filter_map(|moved| async move { moved })
            .collect()
            .await
    }

    /// The rules of each workspace named, read at once (each its revision, and its
    /// definitions only when they moved), or why they could not be.
    pub(super) async fn rules_of<'a>(
        &self,
        workspaces: impl Iterator<Item = &'a str>,
    ) -> HashMap<&'a str, Result<Arc<Definitions>, PortError>> {
        let workspaces: std::collections::BTreeSet<&str> = workspaces.collect();
        let reads = workspaces
            .into_iter()
            .map(|workspace_id| async move { (workspace_id, self.rules(workspace_id).await) });
        stream::iter(reads)
            .buffer_unordered(SETTLING_LANES)
            .collect()
            .await
    }

    /// Settles each workspace's users apart, side by side (its rules read, then
    /// [`Evaluate::settle_all`]), and stops waiting for the rest when `due` completes or,
    /// once half of the workspaces are settled, when the share `share()` starts has run:
    /// a workspace slower than the others by that much holds none of them. The users of
    /// a workspace still at work then are answered `Unavailable`, and its work dropped,
    /// which is safe where it stops: a commit's decisions not yet carried out stay
    /// pending in the user's state, and its next settling carries them out first. (When
    /// every workspace is slow, the store itself is, and parking them would only add
    /// to its load.)
    pub(super) async fn settle_apart<'a, Share: std::future::Future<Output = ()>>(
        &self,
        workspaces: BTreeMap<&'a str, Vec<Subject<'a>>>,
        now: &(impl Fn() -> i64 + Sync),
        due: impl std::future::Future<Output = ()>,
        share: impl FnOnce() -> Share,
    ) -> Outcomes {
        let mut unsettled: HashMap<&str, Vec<usize>> = workspaces
            .iter()
            .map(|(workspace_id, subjects)| {
                (*workspace_id, subjects.iter().map(|s| s.index).collect())
            })
            .collect();
        let half = workspaces.len().div_ceil(2);
        let mut settling: FuturesUnordered<_> = workspaces
            .into_iter()
            .map(|(workspace_id, subjects)| async move {
                (
                    workspace_id,
                    self.settle_workspace(workspace_id, subjects, now).await,
                )
            })
            .collect();
        let mut due = std::pin::pin!(due);
        let mut share = Some(share);
        let mut share_over = std::pin::pin!(Fuse::<Share>::terminated());
        let mut outcomes = Vec::new();
        let mut settled_workspaces = 0;
        loop {
            if settled_workspaces >= half {
                if let Some(start) = share.take() {
                    share_over.set(start().fuse());
                }
            }
            // Work that is done comes first, so that a workspace settled at a deadline
            // counts.
            let deadline = select(due.as_mut(), share_over.as_mut());
            let Either::Left((Some((workspace_id, settled)), _)) =
                select(settling.next(), deadline).await
            else {
                break;
            };
            settled_workspaces += 1;
            unsettled.remove(workspace_id);
            outcomes.extend(settled);
        }
        let late = || PortError::Unavailable("not settled in its share of the batch".into());
        outcomes.extend(
            unsettled
                .into_values()
                .flatten()
                .map(|index| (index, Err(late().into()))),
        );
        outcomes
    }

    /// One workspace's users settled against its rules, read now (none to settle
    /// against: nothing to decide).
    async fn settle_workspace<'a>(
        &self,
        workspace_id: &'a str,
        subjects: Vec<Subject<'a>>,
        now: &(impl Fn() -> i64 + Sync),
    ) -> Outcomes {
        match self.rules(workspace_id).await {
            Ok(rules) if rules.audiences.is_empty() => {
                subjects.iter().map(|s| (s.index, Ok(0))).collect()
            }
            Ok(rules) => {
                self.settle_all(subjects, HashMap::from([(workspace_id, rules)]), now)
                    .await
            }
            Err(err) => subjects
                .iter()
                .map(|s| (s.index, Err(err.clone().into())))
                .collect(),
        }
    }

    /// Brings one user's memberships to the rules over its latest state and commits
    /// them: the events a crashed evaluation left pending it put first (their count),
    /// and the commit whose decisions are still to carry out, if anything changed.
    async fn settle(
        &self,
        subject: &mut Subject<'_>,
        mut definitions: Arc<Definitions>,
        now: &(impl Fn() -> i64 + Sync),
    ) -> Result<(usize, Option<UserAudiences>), AppError> {
        let (workspace_id, user_id) = (subject.workspace_id, subject.external_user_id);
        let mut put = 0;
        let mut read = None;
        for _ in 0..COMMIT_ATTEMPTS {
            let mut state = match read.take() {
                Some(state) => state,
                None => self.store.standing(workspace_id, user_id).await?,
            };
            if !state.pending.is_empty() {
                put += self
                    .carry_out_all(&[(workspace_id, user_id, &state)])
                    .await
                    .remove(0)?;
                state.pending.clear();
            }
            // A user with no item keeps the version it was last decided at.
            let decided_at = match subject.user {
                Some(_) => subject.version,
                None => subject.version.max(state.user_version),
            };
            // Decided at a later version already, this one is stale: commits never go
            // back in version.
            if decided_at < state.user_version {
                return Ok((put, None));
            }
            let decision = Decision {
                workspace_id,
                external_user_id: user_id,
                profile: subject.user.as_ref().map(|user| &user.profile),
                version: decided_at,
                reason: subject.reason,
            };
            let Some(next) = decide(&decision, &definitions, &state, now()) else {
                return Ok((put, None));
            };
            // A record's image decides only if the user is still at it: an older
            // record redelivered after a newer one that changed nothing must not.
            if !subject.fresh {
                subject.user = self.users.get(workspace_id, user_id).await?;
                subject.version = subject.user.as_ref().map_or(subject.version, |u| u.version);
                subject.fresh = true;
                read = Some(state);
                continue;
            }
            if self.store.commit(workspace_id, user_id, &next).await? {
                return Ok((put, Some(next)));
            }
            // The user, its memberships or the rules moved: read them again (the latest
            // user decides, whichever record, page or tick brought it here).
            let (user, found) = tokio::join!(
                self.users.get(workspace_id, user_id),
                self.rules(workspace_id)
            );
            subject.user = user?;
            subject.version = subject.user.as_ref().map_or(subject.version, |u| u.version);
            subject.fresh = true;
            definitions = found?;
        }
        Err(contended())
    }
}
