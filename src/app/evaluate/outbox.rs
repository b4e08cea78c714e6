//! The outbox: a commit's decisions carried out after it (member-list entries, events
//! on the bus, then the decisions forgotten), so that a crash between the commit and
//! them leaves them pending, to be carried out again under the same event ids.

use super::*;

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// Carries out the decisions of commits: member-list entries, the events on the bus
    /// together (in calls shared with the other carry-outs in flight), then each commit
    /// forgets its own. Each commit's events put, or why not
    /// (its decisions stay pending, and the next evaluation puts them with the same ids).
    pub(super) async fn carry_out_all(
        &self,
        commits: &[(&str, &str, &UserAudiences)],
    ) -> Vec<Result<usize, AppError>> {
        let coming = self.calls.coming();
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
        let (commit_of, events): (Vec<usize>, Vec<ChangeEvent>) = commits
            .iter()
            .zip(&applied)
            .enumerate()
            .filter(|(_, (_, applied))| applied.is_ok())
            .flat_map(|(at, ((_, _, state), _))| {
                state.pending.iter().map(move |e| (at, e.to_event()))
            })
            .unzip();
        let mut refused = vec![false; commits.len()];
        let put = self.calls.put(&self.bus, coming, events).await;
        for (commit, _) in commit_of
            .into_iter()
            .zip(put)
            .filter(|(_, refused)| *refused)
        {
            refused[commit] = true;
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
