//! The schedule: a tick sends one time task per partition with users due, and each
//! time task settles its partition's users when their moments come (a rule's edge, or
//! events left to publish).

use super::*;

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// The schedule's tick: one time task per partition with users due by `until_ms`,
    /// so that they are settled by as many invocations as there are such partitions,
    /// each without a cap ([`Evaluate::settle_due`]). A partition with no one due gets
    /// no task: an idle deployment (or an idle hour) costs a query a partition a tick,
    /// not an invocation and a message each. One whose read fails gets its task anyway
    /// (the task reads it again). Returns the tasks sent.
    pub async fn tick(&self, until_ms: i64) -> Result<usize, AppError> {
        let peeks = (0..S::DUE_SHARDS).map(|shard| async move {
            let due = self.store.due(shard, until_ms, None, 1).await;
            let anyone = due.map_or(true, |(users, _)| !users.is_empty());
            anyone.then_some(TimeTask { shard, until_ms })
        });
        let tasks: Vec<TimeTask> = stream::iter(peeks)
            .buffer_unordered(DUE_PEEKS_AT_ONCE)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if !tasks.is_empty() {
            self.builds.send_time(&tasks).await?;
        }
        Ok(tasks.len())
    }

    /// Settles the users of one partition due by `until_ms` (a rule's edge, or events
    /// left to publish), page after page, each when its moment comes: `wait_until`
    /// sleeps to it (the clock is `now`). A user another workspace's edge put in the
    /// same partition waits only for those due before it in this one partition, and
    /// no more than `users_per_s` start a second ([`Pace`]). Returns how many users it
    /// settled and the events it put; a user not settled (failed, or not reached by
    /// `until_ms` at that pace) stays due, and the next tick's task settles it.
    pub async fn settle_due<W, F>(
        &self,
        task: &TimeTask,
        users_per_s: f64,
        now: impl Fn() -> i64 + Sync,
        wait_until: W,
    ) -> Result<(usize, usize), AppError>
    where
        W: Fn(i64) -> F + Sync,
        F: std::future::Future<Output = ()> + Send,
    {
        let mut workspaces: HashMap<String, Arc<Definitions>> = HashMap::new();
        let (mut users, mut events) = (0, 0);
        let mut first_error = None;
        let mut after = None;
        let mut pace = Pace::new(users_per_s, now());
        'pages: loop {
            let (due, more) = self
                .store
                .due(task.shard, task.until_ms, after.as_ref(), DUE_PAGE)
                .await?;
            // In order of their moments; a user settled before its moment would keep its
            // answer until the next change.
            let mut rest = due.as_slice();
            while let Some(((_, first_due), _)) = rest.split_first() {
                let start = pace.free_at.max(*first_due);
                if start > task.until_ms {
                    break 'pages;
                }
                wait_until(start).await;
                let at = now();
                let ready = rest.iter().take_while(|(_, due_at)| *due_at <= at).count();
                let (batch, later) = rest.split_at(pace.take(at, ready));
                rest = later;
                users += batch.len();
                for ((workspace_id, _), _) in batch {
                    if !workspaces.contains_key(workspace_id) {
                        let rules = self.rules(workspace_id).await?;
                        workspaces.insert(workspace_id.clone(), rules);
                    }
                }
                let keys = batch
                    .iter()
                    .map(|((workspace_id, user_id), _)| (workspace_id.as_str(), user_id.as_str()));
                let (subjects, unread) = self.fresh_subjects(keys, Reason::Time).await;
                for (_, outcome) in unread {
                    first_error = first_error.or(outcome.err());
                }
                let definitions = subjects
                    .iter()
                    .map(|s| (s.workspace_id, workspaces[s.workspace_id].clone()))
                    .collect();
                for (_, outcome) in self.settle_all(subjects, definitions, &now).await {
                    match outcome {
                        Ok(put) => events += put,
                        // Still due: the next tick settles it.
                        Err(err) => first_error = first_error.or(Some(err)),
                    }
                }
            }
            match (more, due.last()) {
                (true, Some(last)) => after = Some(last.clone()),
                _ => break,
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok((users, events)),
        }
    }
}

/// When a time task's settles start: at most `per_second` users a second, a second's
/// worth at most at once, so that its partition of the due index (each settle moves
/// the user's entry once: two write units) stays under the partition's limit however
/// many users one edge brings. Idle time banks nothing.
struct Pace {
    gap_ms: f64,
    burst: usize,
    /// The earliest instant the next user may start.
    free_at: i64,
}

impl Pace {
    fn new(per_second: f64, now: i64) -> Self {
        Self {
            gap_ms: 1000.0 / per_second,
            burst: per_second.floor().clamp(1.0, usize::MAX as f64) as usize,
            free_at: now,
        }
    }

    /// How many of the `ready` users start at `at` (at least one); the next start
    /// waits for them.
    fn take(&mut self, at: i64, ready: usize) -> usize {
        let starting = ready.clamp(1, self.burst);
        self.free_at = at + (starting as f64 * self.gap_ms).ceil() as i64;
        starting
    }
}
