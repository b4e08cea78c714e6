//! A build task: one page of an audience's build (its users settled against the rule
//! being built, the page recorded) or of a deleted audience's drop, and the task that
//! goes on from there queued.

use super::*;

impl<S: MembershipStore, U: UserSource, B: WorkQueues, E: Bus> Evaluate<S, U, B, E> {
    /// One page of a build (or of a delete's drop), and the next task queued.
    pub async fn build(
        &self,
        task: &BuildTask,
        now: impl Fn() -> i64 + Sync,
    ) -> Result<Built, AppError> {
        let workspace_id = task.workspace_id.as_str();
        if task.drop {
            let after = self
                .store
                .drop_members(
                    workspace_id,
                    &task.audience_id,
                    task.rule_rev,
                    task.sharded,
                    task.cursor.as_deref(),
                    DROP_PAGE,
                )
                .await?;
            let next = after.map(|cursor| BuildTask {
                cursor: Some(cursor),
                ..task.clone()
            });
            return self.then(next, 0, 0, 0).await;
        }
        // The rules as of now (the revision read, the rules held at it): a page reads
        // no definition, so that builds do not take their workspace's definitions key.
        // Whether the build is done is its record's to say (below).
        let definitions = self.rules(workspace_id).await?;
        let current = definitions
            .audiences
            .iter()
            .any(|a| a.audience_id == task.audience_id && a.rule_rev == task.rule_rev);
        if !current {
            // Replaced or deleted: a newer task (or none) carries on.
            return self.then(None, 0, 0, 0).await;
        }
        let (page, to) = self
            .users
            .page(workspace_id, task.cursor.as_deref(), BUILD_PAGE)
            .await?;
        let users = page.len();
        let subjects = page
            .iter()
            .enumerate()
            .map(|(index, user)| Subject {
                index,
                workspace_id,
                external_user_id: &user.external_user_id,
                user: Some(user.clone()),
                version: user.version,
                fresh: true,
                reason: Reason::Build,
            })
            .collect();
        let definitions = HashMap::from([(workspace_id, definitions)]);
        let outcomes = self.settle_all(subjects, definitions, &now).await;
        let (events, failed) = self.tally(outcomes, |index| format!("build page user {index}"));
        let failed_keys: Vec<(&str, &str)> = failed
            .iter()
            .map(|&index| (workspace_id, page[index].external_user_id.as_str()))
            .collect();
        self.park(&failed_keys).await?;
        let step = BuildStep {
            from: task.cursor.clone(),
            to: to.clone(),
            scanned: users as u64,
        };
        let record = self
            .store
            .record_build(workspace_id, &task.audience_id, task.rule_rev, &step)
            .await?;
        // A redelivered task whose page was recorded before queues the next again (its
        // first try may have failed to); one that the build has moved past stops.
        let goes_on = match record {
            BuildRecord::Recorded => true,
            BuildRecord::AlreadyAt(at) => at.is_some() && at == to,
            BuildRecord::Replaced => false,
        };
        let next = to.filter(|_| goes_on).map(|cursor| BuildTask {
            cursor: Some(cursor),
            ..task.clone()
        });
        self.then(next, users, events, failed.len()).await
    }

    async fn then(
        &self,
        next: Option<BuildTask>,
        users: usize,
        events: usize,
        parked: usize,
    ) -> Result<Built, AppError> {
        if let Some(task) = &next {
            self.builds.send(task).await?;
        }
        Ok(Built {
            users,
            events,
            parked,
            next,
        })
    }
}
