//! The outbox: a commit's decisions carried out after it (member-list entries, events
//! on the bus, then the decisions forgotten), so that a crash between the commit and
//! them leaves them pending, to be carried out again under the same event ids.

use super::*;

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// Carries out the decisions of commits: member-list entries, the events on the bus
    /// together, then each commit forgets its own. Each commit's events put, or why not
    /// (its decisions stay pending, and the next evaluation puts them with the same ids).
    pub(super) async fn carry_out_all(
        &self,
        commits: &[(&str, &str, &UserAudiences)],
    ) -> Vec<Result<usize, AppError>> {
        let applying = commits
            .iter()
            .map(|(workspace_id, user_id, state)| async move {
                if state.pending.is_empty() {
                    return Ok(());
                }
                self.store
                    .write_entries(workspace_id, user_id, state.rev, &state.pending)
                    .await
            });
        let applied: Vec<Result<(), PortError>> = stream::iter(applying)
            .buffered(SETTLING_LANES)
            .collect()
            .await;
        let events: Vec<(usize, ChangeEvent)> = commits
            .iter()
            .zip(&applied)
            .enumerate()
            .filter(|(_, (_, applied))| applied.is_ok())
            .flat_map(|(at, ((_, _, state), _))| {
                state.pending.iter().map(move |e| (at, e.to_event()))
            })
            .collect();
        let mut refused = vec![false; commits.len()];
        let sizes = events.iter().map(|(_, event)| E::entry_size(event));
        // The calls at once: each user's events of a commit are in one call or another,
        // and subscribers order a user's moves by `user_version` and `at` (EventBridge
        // keeps no order anyway).
        let groups = call_groups(sizes, E::MAX_ENTRIES_PER_CALL, E::MAX_BYTES_PER_CALL);
        let calls = groups.iter().map(|group| {
            let call: Vec<&ChangeEvent> = group.iter().map(|&i| &events[i].1).collect();
            async move { (group, self.bus.put(&call).await) }
        });
        let puts: Vec<_> = stream::iter(calls).buffered(BUS_LANES).collect().await;
        for (group, put) in puts {
            match put {
                Ok(not_put) => not_put
                    .into_iter()
                    .for_each(|i| refused[events[group[i]].0] = true),
                Err(_) => group.iter().for_each(|&i| refused[events[i].0] = true),
            }
        }
        let clearing = commits.iter().zip(applied).zip(refused).map(
            |(((workspace_id, user_id, state), applied), refused)| async move {
                applied?;
                if refused {
                    return Err(PortError::Unavailable("membership events refused".into()).into());
                }
                if !state.pending.is_empty() {
                    self.store
                        .clear_pending(workspace_id, user_id, state.rev, state.next_due)
                        .await?;
                }
                Ok(state.pending.len())
            },
        );
        stream::iter(clearing)
            .buffered(SETTLING_LANES)
            .collect()
            .await
    }
}
