//! Audiences over in-memory tables: live changes, erasure, stale and repeated
//! deliveries, races with definitions, builds (redelivered, replaced, with writes
//! during them), time, deletes, and the events each step puts on the bus.

use super::*;
use crate::app::evaluate::{Evaluate, BUILD_PAGE};
use crate::app::fakes::*;
use crate::app::ports::{StoredUser, TimeTask, UserImage, UserKey};
use crate::app::publish::StreamChange;
use crate::app::{runtime_timer, Timer};
use crate::contract::{parse_audience, parse_upsert};
use crate::domain::audience::{AUDIENCE_ENTERED, AUDIENCE_EXITED};
use crate::domain::membership::PENDING_GRACE_MS;
use proptest::prelude::*;
use serde_json::{json, Value};

const T0: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;
const WS: &str = "ws";

type TestEvaluate = Evaluate<MemoryAudiences, MemoryUsers, MemoryBuilds, MemoryBus>;

struct World {
    users: MemoryUsers,
    store: MemoryAudiences,
    builds: MemoryBuilds,
    bus: MemoryBus,
    evaluate: TestEvaluate,
    curate: Curate<MemoryAudiences, MemoryUsers, MemoryBuilds, MemoryKeys, Arc<MemoryCounters>>,
}

fn world() -> World {
    world_lingering(runtime_timer())
}

/// A world whose carry-outs' events wait `linger` for company.
fn world_lingering(linger: Timer) -> World {
    let users = MemoryUsers::default();
    let store = MemoryAudiences::default();
    let (builds, bus) = (MemoryBuilds::default(), MemoryBus::default());
    let limiter = Arc::new(RateLimiter::new(Arc::new(MemoryCounters::default())));
    World {
        evaluate: Evaluate::with_linger(
            store.clone(),
            users.clone(),
            builds.clone(),
            bus.clone(),
            linger,
        ),
        curate: Curate::new(
            store.clone(),
            users.clone(),
            builds.clone(),
            MemoryKeys::default(),
            limiter,
        ),
        users,
        store,
        builds,
        bus,
    }
}

fn caller() -> Caller {
    Caller {
        workspace_id: WS.into(),
        rate: 10_000,
    }
}

/// A user's write stream record: the item before and after.
type Record = (UserImage, UserImage);

impl World {
    /// Defines an audience at `at` (its build task queued, not run).
    async fn define(&self, id: &str, rule: Value, at: i64) {
        self.define_in(WS, id, rule, at).await
    }

    /// [`World::define`] in another workspace.
    async fn define_in(&self, workspace_id: &str, id: &str, rule: Value, at: i64) {
        let body = json!({"name": id, "rule": rule}).to_string();
        let definition = parse_audience(body.as_bytes()).map_err(RequestError::from);
        let stamp = Stamp::new(at, format!("put-{workspace_id}-{id}-{at}"));
        let caller = Caller {
            workspace_id: workspace_id.into(),
            rate: 10_000,
        };
        self.curate
            .define(&caller, id, definition, None, stamp)
            .await
            .unwrap();
    }

    /// Runs queued build tasks until none is left; how many ran.
    async fn build(&self, at: i64) -> usize {
        let mut ran = 0;
        while let Some(task) = self.builds.take() {
            self.evaluate.build(&task, || at).await.unwrap();
            ran += 1;
        }
        ran
    }

    /// Writes a user's traits (merged), or erases it (`None`): the new version's record.
    fn write(&self, user: &str, traits: Option<Value>, at: i64) -> Record {
        self.write_in(WS, user, traits, at)
    }

    /// [`World::write`] in another workspace.
    fn write_in(&self, workspace_id: &str, user: &str, traits: Option<Value>, at: i64) -> Record {
        let old = self.users.user(workspace_id, user);
        let mut next = old.clone().unwrap_or_else(|| StoredUser::new(user));
        match traits {
            Some(traits) => {
                let body = json!({"external_user_id": user, "traits": traits}).to_string();
                let upsert = parse_upsert(body.as_bytes(), at).unwrap();
                next.profile
                    .apply(&Stamp::new(at, format!("r{at}")), &upsert.changes);
            }
            None => {
                next.profile.erase(&Stamp::new(at, format!("e{at}")));
            }
        }
        next.version = crate::domain::next_version(next.version, at);
        lock_insert(&self.users, workspace_id, next.clone());
        let image = |user| (workspace_id.to_owned(), user);
        (old.map(image), Some(image(next)))
    }

    async fn deliver(&self, records: &[Record], at: i64) -> (usize, Option<String>) {
        let positions: Vec<String> = (0..records.len()).map(|i| i.to_string()).collect();
        let changes: Vec<StreamChange<String>> = records
            .iter()
            .zip(&positions)
            .map(|(images, position)| StreamChange {
                position,
                images: Ok(images.clone()),
            })
            .collect();
        let settled = self
            .evaluate
            .changes(
                &changes,
                || at,
                std::future::pending(),
                std::future::pending,
            )
            .await;
        (settled.events, settled.first_failure.map(str::to_owned))
    }

    /// The users due by `until`, in every partition.
    async fn due(&self, until: i64) -> Vec<UserKey> {
        let mut due = Vec::new();
        for shard in 0..MemoryAudiences::DUE_SHARDS {
            let (page, _) = self.store.due(shard, until, None, 1_000).await.unwrap();
            due.extend(page.into_iter().map(|(key, _)| key));
        }
        due
    }

    /// A tick by `until`, and each time task it sent run in turn: the users settled and
    /// the events put, in all.
    async fn tick<W, F>(
        &self,
        until: i64,
        now: impl Fn() -> i64 + Sync,
        wait_until: W,
    ) -> (usize, usize)
    where
        W: Fn(i64) -> F + Sync,
        F: std::future::Future<Output = ()> + Send,
    {
        let sent = self.evaluate.tick(until).await.unwrap();
        let tasks = self.builds.take_time();
        assert_eq!(tasks.len(), sent);
        let mut settled = (0, 0);
        for task in tasks {
            let (users, events) = self
                .evaluate
                .settle_due(&task, f64::INFINITY, &now, &wait_until)
                .await
                .unwrap();
            settled = (settled.0 + users, settled.1 + events);
        }
        settled
    }

    /// `(type, audience, user, reason)` of every membership event the bus took.
    fn events(&self) -> Vec<(String, String, String, String)> {
        self.bus
            .accepted()
            .iter()
            .filter(|e| e.source == "vibefollow.audiences")
            .map(|e| {
                let d = &e.detail;
                let s = |name: &str| d[name].as_str().unwrap_or_default().to_owned();
                (
                    e.detail_type.to_owned(),
                    s("audience_id"),
                    s("external_user_id"),
                    s("reason"),
                )
            })
            .collect()
    }

    /// A user's audiences; none for a user with no profile (which reads answer 404:
    /// `a_user_with_no_profile_has_no_audiences_to_show`).
    async fn of_user(&self, user: &str) -> Vec<String> {
        match self.curate.of_user(&caller(), user, T0).await {
            Ok(found) => found.into_iter().map(|(id, _)| id).collect(),
            Err(AppError::Request(RequestError::UserNotFound)) => Vec::new(),
            Err(err) => panic!("{err}"),
        }
    }
}

fn lock_insert(users: &MemoryUsers, workspace_id: &str, user: StoredUser) {
    users.users.lock().unwrap().insert(
        (workspace_id.to_owned(), user.external_user_id.clone()),
        user,
    );
}

fn entered(audience: &str, user: &str, reason: &str) -> (String, String, String, String) {
    (
        AUDIENCE_ENTERED.into(),
        audience.into(),
        user.into(),
        reason.into(),
    )
}

fn exited(audience: &str, user: &str, reason: &str) -> (String, String, String, String) {
    (
        AUDIENCE_EXITED.into(),
        audience.into(),
        user.into(),
        reason.into(),
    )
}

/// A world with audience `new`: users whose `signupDate` is within the last 7 days.
async fn signed_up_within_a_week() -> World {
    let w = world();
    let rule = json!({"field": "signupDate", "op": "within_last", "value": "P7D"});
    w.define("new", rule, T0).await;
    w.build(T0).await;
    w
}

fn trials() -> Value {
    json!({"field": "plan", "op": "eq", "value": "trial"})
}

#[tokio::test]
async fn a_change_that_matches_enters_and_one_that_stops_matching_exits() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let first = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    assert_eq!(w.deliver(&[first], T0 + 2).await, (1, None));
    assert_eq!(w.store.listed(WS, "trials"), ["u1"]);
    assert_eq!(w.of_user("u1").await, ["trials"]);
    // A change that flips nothing reads the state and writes nothing.
    let commits = |w: &World| {
        w.store
            .journal
            .calls()
            .iter()
            .filter(|c| *c == "memberships.commit")
            .count()
    };
    let before = commits(&w);
    let same = w.write("u1", Some(json!({"company": "Acme"})), T0 + 3);
    assert_eq!(w.deliver(&[same], T0 + 4).await, (0, None));
    assert_eq!(commits(&w), before);
    let paid = w.write("u1", Some(json!({"plan": "pro"})), T0 + 5);
    w.deliver(&[paid], T0 + 6).await;
    assert!(w.store.listed(WS, "trials").is_empty());
    assert_eq!(
        w.events(),
        [
            entered("trials", "u1", "change"),
            exited("trials", "u1", "change")
        ]
    );
    // The events carry the user's version and a stable id, and no PII.
    let bus = w.bus.accepted();
    let detail = &bus[0].detail;
    // A new user's versions start from the clock, as the table starts them.
    assert_eq!(detail["user_version"], json!(T0 + 1));
    assert_eq!(detail["at"], json!("2027-01-15T08:00:00.002Z"));
    assert!(detail.get("email").is_none() && detail.get("traits").is_none());
}

#[tokio::test]
async fn an_erased_user_leaves_every_audience_with_reason_erase() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.define("everyone", json!({"field": "plan", "op": "exists"}), T0)
        .await;
    w.build(T0).await;
    let set = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    w.deliver(&[set], T0 + 3).await;
    let erase = w.write("u1", None, T0 + 4);
    w.deliver(&[erase], T0 + 5).await;
    assert!(w.store.listed(WS, "trials").is_empty() && w.store.listed(WS, "everyone").is_empty());
    let erased: Vec<_> = w.events().into_iter().filter(|e| e.3 == "erase").collect();
    assert_eq!(
        erased,
        [
            exited("everyone", "u1", "erase"),
            exited("trials", "u1", "erase")
        ]
    );
}

#[tokio::test]
async fn an_older_record_never_decides_over_a_newer_version() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let trial = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    let pro = w.write("u1", Some(json!({"plan": "pro"})), T0 + 2);
    // The newer record first, then the older one redelivered alone.
    w.deliver(&[pro], T0 + 3).await;
    w.deliver(std::slice::from_ref(&trial), T0 + 4).await;
    assert!(w.store.listed(WS, "trials").is_empty());
    assert!(w.events().is_empty(), "{:?}", w.events());
    // Both in one batch, in order: the last decides.
    let w = world();
    w.define("trials", trials(), T0).await;
    let trial = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    let pro = w.write("u1", Some(json!({"plan": "pro"})), T0 + 2);
    w.deliver(&[trial, pro], T0 + 3).await;
    assert!(w.events().is_empty());
}

#[tokio::test]
async fn a_batch_shares_its_bus_calls_and_reads_only_the_rules_revision() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let records: Vec<Record> = (0..25)
        .map(|i| w.write(&format!("u{i:02}"), Some(json!({"plan": "trial"})), T0 + 1))
        .collect();
    let (calls_before, puts_before) = (
        w.store.journal.calls().len(),
        w.bus.calls.lock().unwrap().len(),
    );
    assert_eq!(w.deliver(&records, T0 + 2).await, (25, None));
    // Ten events a call: three calls for 25 users, not 25.
    assert_eq!(w.bus.calls.lock().unwrap().len() - puts_before, 3);
    let calls = w.store.journal.calls()[calls_before..].to_vec();
    let count = |name: &str| calls.iter().filter(|c| *c == name).count();
    // The rules held since the build read them (same revision): their revision read
    // once for the batch and once after its commits, the rules themselves not at all.
    assert_eq!(
        (count("audiences.rules"), count("audiences.revision")),
        (0, 2)
    );
    // Per user: its standing, its commit, its list entry, forgetting its events (and a
    // read of the user, that a record's image is still the user: the users port's).
    for per_user in [
        "memberships.standing",
        "memberships.commit",
        "memberships.write_entries",
        "memberships.clear_pending",
    ] {
        assert_eq!(count(per_user), 25, "{per_user}");
    }
    assert_eq!(w.store.listed(WS, "trials").len(), 25);
}

#[tokio::test]
async fn a_user_with_no_profile_has_no_audiences_to_show() {
    let w = world();
    w.define("trials", trials(), T0).await;
    let trial = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    w.deliver(&[trial], T0 + 2).await;
    assert_eq!(w.of_user("u1").await, ["trials"]);
    let erase = w.write("u1", None, T0 + 3);
    w.deliver(&[erase], T0 + 4).await;
    for user in ["u1", "never-written"] {
        assert!(matches!(
            w.curate.of_user(&caller(), user, T0 + 5).await,
            Err(AppError::Request(RequestError::UserNotFound))
        ));
    }
}

#[tokio::test]
async fn events_left_pending_by_a_refused_put_go_out_on_the_next_evaluation_with_the_same_ids() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let trial = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    w.bus.faults.fail("bus.put", unavailable(), 1);
    let (_, failed) = w.deliver(std::slice::from_ref(&trial), T0 + 2).await;
    assert_eq!(failed, None, "the batch is done…");
    let parked = w.builds.take_parked();
    assert_eq!(
        parked,
        [(WS.to_owned(), "u1".to_owned())],
        "…the user parked"
    );
    assert_eq!(
        w.store.listed(WS, "trials"),
        ["u1"],
        "the flip is committed"
    );
    assert_eq!(w.store.state(WS, "u1").pending.len(), 1);
    // Due once their grace is over: a tick would carry them out if no change came.
    assert!(w.due(T0 + 2).await.is_empty());
    assert_eq!(w.due(T0 + 2 + PENDING_GRACE_MS).await.len(), 1);
    // The retry publishes the pending event and decides nothing new; so would a
    // redelivery of the record.
    let retried = w.evaluate.retry(&parked, || T0 + 3).await;
    assert!(matches!(retried[..], [Ok(1)]), "{retried:?}");
    assert_eq!(w.deliver(&[trial], T0 + 3).await, (0, None));
    assert!(w.store.state(WS, "u1").pending.is_empty());
    assert_eq!(w.events(), [entered("trials", "u1", "change")]);
    assert!(w.due(T0 + 3).await.is_empty());
}

#[tokio::test]
async fn a_definition_that_moves_between_read_and_commit_is_decided_again() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let trial = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    // Between the batch's read of the rules and its commit, the rule is replaced.
    let curate_store = w.store.clone();
    *w.store.before_commit.lock().unwrap() = Some(Box::new(move |_| {
        let mut definitions = curate_store.definitions.lock().unwrap();
        let found = definitions.get_mut(WS).unwrap();
        let (audience, _) = found.audiences.get_mut("trials").unwrap();
        if audience.rule_rev == 1 {
            audience.rule =
                crate::contract::parse_rule(&json!({"field": "plan", "op": "eq", "value": "pro"}))
                    .unwrap();
            audience.rule_rev = 2;
            found.revision = 2;
        }
    }));
    w.deliver(&[trial], T0 + 2).await;
    // The commit under the old rule landed; the check after it decides again under
    // the new one, and the events say both, in order.
    assert!(
        w.store.listed(WS, "trials").is_empty(),
        "decided under the replaced rule"
    );
    assert_eq!(
        w.events(),
        [
            entered("trials", "u1", "change"),
            exited("trials", "u1", "change")
        ]
    );
}

#[tokio::test]
async fn a_build_brings_existing_users_in_page_by_page_and_is_then_ready() {
    let w = world();
    for i in 0..450 {
        let plan = if i % 3 == 0 { "trial" } else { "pro" };
        w.write(&format!("u{i:03}"), Some(json!({"plan": plan})), T0);
    }
    w.define("trials", trials(), T0 + 1).await;
    let view = w.curate.get(&caller(), "trials", T0 + 1).await.unwrap();
    assert_eq!(view.audience.building, Some(0));
    // First page, then a redelivery of the same task: recorded once, queued once.
    let first = w.builds.take().unwrap();
    let built = w.evaluate.build(&first, || T0 + 2).await.unwrap();
    assert_eq!(built.users, BUILD_PAGE);
    let again = w.evaluate.build(&first, || T0 + 2).await.unwrap();
    assert_eq!(
        again.next, built.next,
        "a task redelivered after its send failed goes on"
    );
    assert_eq!(w.builds.tasks.lock().unwrap().len(), 2);
    w.builds.take();
    let view = w.curate.get(&caller(), "trials", T0 + 2).await.unwrap();
    assert_eq!(view.audience.building, Some(BUILD_PAGE as u64));
    // Pages read the rules by revision, held between pages: the definitions (their
    // workspace's one key) are not read again while they stand.
    let reads = |name: &str| {
        w.store
            .journal
            .calls()
            .iter()
            .filter(|c| *c == name)
            .count()
    };
    let (lists, revisions) = (reads("audiences.rules"), reads("audiences.revision"));
    assert_eq!(w.build(T0 + 3).await, 2);
    assert_eq!(reads("audiences.rules"), lists);
    assert!(reads("audiences.revision") > revisions);
    let view = w.curate.get(&caller(), "trials", T0 + 3).await.unwrap();
    assert_eq!((view.audience.building, view.members), (None, 150));
    assert_eq!(w.events().len(), 150);
    assert!(w.events().iter().all(|e| e.3 == "build"));
}

#[tokio::test]
async fn writes_during_a_build_are_not_lost() {
    let w = world();
    for i in 0..300 {
        w.write(&format!("u{i:03}"), Some(json!({"plan": "pro"})), T0);
    }
    w.define("trials", trials(), T0 + 1).await;
    let first = w.builds.take().unwrap();
    w.evaluate.build(&first, || T0 + 2).await.unwrap();
    // A user the build has passed and one it has not yet reached change; their
    // changes are evaluated against the new rule as they come.
    let passed = w.write("u010", Some(json!({"plan": "trial"})), T0 + 3);
    let ahead = w.write("u250", Some(json!({"plan": "trial"})), T0 + 3);
    w.deliver(&[passed, ahead], T0 + 4).await;
    w.build(T0 + 5).await;
    assert_eq!(w.store.listed(WS, "trials"), ["u010", "u250"]);
    assert_eq!(
        w.events().len(),
        2,
        "the build found u250 already in: {:?}",
        w.events()
    );
}

#[tokio::test]
async fn a_replaced_rule_stops_the_old_build_and_builds_the_new() {
    let w = world();
    for i in 0..300 {
        let plan = if i < 150 { "trial" } else { "pro" };
        w.write(&format!("u{i:03}"), Some(json!({"plan": plan})), T0);
    }
    w.define("a", trials(), T0).await;
    let old = w.builds.take().unwrap();
    w.define(
        "a",
        json!({"field": "plan", "op": "eq", "value": "pro"}),
        T0 + 1,
    )
    .await;
    let stale = w.evaluate.build(&old, || T0 + 2).await.unwrap();
    assert_eq!((stale.users, stale.next), (0, None));
    w.build(T0 + 3).await;
    let listed = w.store.listed(WS, "a");
    assert_eq!((listed.len(), listed[0].as_str()), (150, "u150"));
    let view = w.curate.get(&caller(), "a", T0 + 3).await.unwrap();
    assert_eq!(view.audience.building, None);
}

#[tokio::test]
async fn time_moves_a_user_out_of_a_within_last_window_with_no_write() {
    let w = signed_up_within_a_week().await;
    let signup = crate::domain::format_millis(T0).unwrap();
    let record = w.write("u1", Some(json!({"signupDate": signup})), T0 + 1);
    w.deliver(&[record], T0 + 2).await;
    assert_eq!(w.store.listed(WS, "new"), ["u1"]);
    let edge = T0 + 7 * DAY + 1;
    assert_eq!(w.store.state(WS, "u1").next_due, Some(edge));
    // Before the edge, nothing is due; a tick that covers it waits for the moment.
    assert!(w.due(edge - 1).await.is_empty());
    let waited = std::sync::Mutex::new(Vec::new());
    let clock = std::sync::atomic::AtomicI64::new(edge - 30_000);
    let (users, events) = w
        .tick(
            edge + 10_000,
            || clock.load(std::sync::atomic::Ordering::SeqCst),
            |until| {
                waited.lock().unwrap().push(until);
                clock.fetch_max(until, std::sync::atomic::Ordering::SeqCst);
                async {}
            },
        )
        .await;
    assert_eq!((users, events), (1, 1));
    assert_eq!(*waited.lock().unwrap(), [edge]);
    assert!(w.store.listed(WS, "new").is_empty());
    assert_eq!(w.events().last(), Some(&exited("new", "u1", "time")));
    assert_eq!(
        w.store.state(WS, "u1").next_due,
        None,
        "nothing left to wait for"
    );
}

#[tokio::test]
async fn a_deleted_audience_drops_its_members_and_a_new_one_of_that_id_starts_empty() {
    let w = world();
    for i in 0..3 {
        w.write(&format!("u{i}"), Some(json!({"plan": "trial"})), T0);
    }
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    assert_eq!(w.store.listed(WS, "trials").len(), 3);
    w.curate
        .delete(&caller(), "trials", None, Stamp::new(T0 + 1, "del"))
        .await
        .unwrap();
    assert!(matches!(
        w.curate.get(&caller(), "trials", T0 + 1).await,
        Err(AppError::AudienceNotFound)
    ));
    assert!(w.of_user("u0").await.is_empty());
    // Defined again before the drop ran: the old members are not its members.
    w.define(
        "trials",
        json!({"field": "plan", "op": "eq", "value": "pro"}),
        T0 + 2,
    )
    .await;
    assert!(w.of_user("u0").await.is_empty());
    let pro = w.write("u1", Some(json!({"plan": "pro"})), T0 + 3);
    w.deliver(&[pro], T0 + 4).await;
    w.build(T0 + 5).await;
    assert_eq!(w.store.listed(WS, "trials"), ["u1"]);
    assert_eq!(w.of_user("u1").await, ["trials"]);
    assert!(w.store.state(WS, "u0").members.is_empty());
    // Deleting what is not there is done already; an id no audience can have is 404.
    assert!(w
        .curate
        .delete(&caller(), "nope", None, Stamp::new(T0 + 6, "d2"))
        .await
        .is_ok());
    assert!(w.builds.take().is_none());
    assert!(matches!(
        w.curate
            .delete(&caller(), "no pe", None, Stamp::new(T0 + 6, "d3"))
            .await,
        Err(AppError::AudienceNotFound)
    ));
}

#[tokio::test]
async fn a_new_audience_lists_in_shards_and_one_that_started_with_one_list_keeps_it() {
    let w = world();
    w.define("new", trials(), T0).await;
    w.define("old", trials(), T0).await;
    // "old" as audiences started before lists were sharded (and counted).
    if let Some((audience, _)) = w
        .store
        .definitions
        .lock()
        .unwrap()
        .get_mut(WS)
        .and_then(|d| d.audiences.get_mut("old"))
    {
        (audience.sharded, audience.counted) = (false, false);
    }
    let records: Vec<Record> = (0..3)
        .map(|i| w.write(&format!("u{i}"), Some(json!({"plan": "trial"})), T0))
        .collect();
    w.deliver(&records, T0 + 1).await;
    w.build(T0 + 1).await;
    let list = |audience: &str, sharded: bool| {
        let key = (WS.to_owned(), audience.to_owned(), sharded);
        w.store
            .lists
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |list| list.len())
    };
    assert_eq!([list("new", true), list("old", false)], [3, 3]);
    assert_eq!([list("new", false), list("old", true)], [0, 0]);
    // Replaced, each keeps its way: its members are read where they are.
    w.define("old", json!({"field": "plan", "op": "exists"}), T0 + 2)
        .await;
    w.build(T0 + 2).await;
    for audience in ["new", "old"] {
        let page = crate::contract::Paged::Members {
            audience_id: audience,
        }
        .query(None, None);
        let got = w.curate.members(&caller(), audience, page, T0 + 3).await;
        assert_eq!(got.unwrap().members.len(), 3, "{audience}");
    }
    let count = w
        .curate
        .get(&caller(), "old", T0 + 3)
        .await
        .unwrap()
        .members;
    assert_eq!(count, 3);
    // Deleted, each list is dropped in its own layout.
    for audience in ["new", "old"] {
        let stamp = Stamp::new(T0 + 4, format!("del-{audience}"));
        w.curate
            .delete(&caller(), audience, None, stamp)
            .await
            .unwrap();
    }
    w.build(T0 + 4).await;
    assert_eq!([list("new", true), list("old", false)], [0, 0]);
}

#[tokio::test]
async fn a_workspace_holds_at_most_100_audiences_and_a_replay_defines_nothing_again() {
    let w = world();
    for i in 0..100 {
        w.define(&format!("a{i}"), trials(), T0).await;
    }
    let body = json!({"name": "one more", "rule": trials()}).to_string();
    let definition = || parse_audience(body.as_bytes()).map_err(RequestError::from);
    let refused = w
        .curate
        .define(&caller(), "more", definition(), None, Stamp::new(T0, "x"))
        .await;
    assert!(matches!(refused, Err(AppError::TooManyAudiences)));
    // Replacing one still works; with a key, its replay changes nothing.
    let key = Some("k1");
    let first = w
        .curate
        .define(&caller(), "a1", definition(), key, Stamp::new(T0, "p1"))
        .await;
    let rev = w.store.list(WS).await.unwrap().revision;
    let replay = w
        .curate
        .define(&caller(), "a1", definition(), key, Stamp::new(T0, "p2"))
        .await;
    assert_eq!((first.unwrap(), replay.unwrap()), (false, true));
    assert_eq!(w.store.list(WS).await.unwrap().revision, rev);
}

#[tokio::test]
async fn members_page_in_id_order_and_a_member_present_throughout_is_listed_once() {
    let w = world();
    w.define("trials", trials(), T0).await;
    let records: Vec<Record> = (0..25)
        .map(|i| w.write(&format!("u{i:02}"), Some(json!({"plan": "trial"})), T0))
        .collect();
    w.deliver(&records, T0 + 1).await;
    let paged = crate::contract::Paged::Members {
        audience_id: "trials",
    };
    let page = |cursor: Option<String>| paged.query(Some("10"), cursor.as_deref());
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let got = w
            .curate
            .members(&caller(), "trials", page(cursor), T0)
            .await
            .unwrap();
        seen.extend(got.members.iter().map(|(id, _)| id.clone()));
        // Members come and go while the walk goes on.
        if seen.len() == 10 {
            let leave = w.write("u15", Some(json!({"plan": "pro"})), T0 + 2);
            let join = w.write("u05a", Some(json!({"plan": "trial"})), T0 + 2);
            w.deliver(&[leave, join], T0 + 3).await;
        }
        match got.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25)
        .filter(|i| *i != 15)
        .map(|i| format!("u{i:02}"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(matches!(
        w.curate
            .members(&caller(), &"x".repeat(65), page(None), T0)
            .await,
        Err(AppError::AudienceNotFound)
    ));
}

#[tokio::test]
async fn a_hundred_audiences_flip_in_one_commit() {
    let w = world();
    for i in 0..100 {
        w.define(
            &format!("a{i:03}"),
            json!({"field": "plan", "op": "exists"}),
            T0,
        )
        .await;
    }
    let record = w.write("u1", Some(json!({"plan": "x"})), T0 + 1);
    assert_eq!(w.deliver(&[record], T0 + 2).await, (100, None));
    assert_eq!(w.of_user("u1").await.len(), 100);
}

/// One user's writes: each sets `plan` (or erases the user).
fn arb_writes() -> impl Strategy<Value = Vec<Option<&'static str>>> {
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(vec![Some("trial"), Some("pro"), Some("free")]), 1 => Just(None)],
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever order and however often the records of two users come (stale ones
    /// after newer, repeats), memberships end as the rules over each user's latest
    /// state, and each (audience, user)'s events alternate, starting with Entered.
    #[test]
    fn memberships_equal_the_rules_over_the_latest_state_whatever_the_delivery(
        writes in prop::collection::vec(arb_writes(), 2),
        order in prop::collection::vec((0usize..100, 1usize..4), 1..30),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let w = world();
            w.define("trials", trials(), T0).await;
            w.define("paying", json!({"field": "plan", "op": "in", "value": ["pro", "free"]}), T0).await;
            w.build(T0).await;
            let mut records = Vec::new();
            for (u, user_writes) in writes.iter().enumerate() {
                for (i, plan) in user_writes.iter().enumerate() {
                    let traits = plan.map(|p| json!({"plan": p}));
                    records.push(w.write(&format!("u{u}"), traits, T0 + 1 + i as i64));
                }
            }
            // Batches drawn from the records in any order, then every record once in
            // order (the stream's own guarantee: each record is delivered).
            for (pick, len) in &order {
                let batch: Vec<Record> = (0..*len).map(|k| records[(pick + k) % records.len()].clone()).collect();
                w.deliver(&batch, T0 + 100).await;
            }
            w.deliver(&records, T0 + 200).await;
            for (u, user_writes) in writes.iter().enumerate() {
                let user = format!("u{u}");
                let last = user_writes.last().copied().flatten();
                let mut expected = Vec::new();
                if last.is_some_and(|p| p == "pro" || p == "free") { expected.push("paying".to_owned()); }
                if last == Some("trial") { expected.push("trials".to_owned()); }
                prop_assert_eq!(w.of_user(&user).await, expected.clone());
                for audience in ["paying", "trials"] {
                    let listed = w.store.listed(WS, audience).contains(&user);
                    prop_assert_eq!(listed, expected.iter().any(|a| a == audience));
                    let kinds: Vec<String> = w.events().into_iter()
                        .filter(|e| e.1 == audience && e.2 == user)
                        .map(|e| e.0)
                        .collect();
                    for (k, kind) in kinds.iter().enumerate() {
                        let want = if k % 2 == 0 { AUDIENCE_ENTERED } else { AUDIENCE_EXITED };
                        prop_assert_eq!(kind.as_str(), want);
                    }
                    prop_assert_eq!(kinds.len() % 2 == 1, listed);
                }
            }
            // The kept count is the list's, whatever the order.
            for audience in ["paying", "trials"] {
                let view = w.curate.get(&caller(), audience, T0 + 300).await.unwrap();
                prop_assert_eq!(view.members as usize, w.store.listed(WS, audience).len());
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn time_alone_moving_a_user_in_out_and_in_again_gives_each_move_its_own_id() {
    let w = world();
    let hour = 3_600_000;
    let window = |field: &str| json!({"field": field, "op": "within_last", "value": "PT1H"});
    w.define("recent", json!({"any": [window("a"), window("b")]}), T0)
        .await;
    w.build(T0).await;
    let at = |ms: i64| crate::domain::format_millis(ms).unwrap();
    // `a` comes into its window in an hour and leaves it an hour later; `b` an hour after.
    let record = w.write(
        "u1",
        Some(json!({"a": at(T0 + hour), "b": at(T0 + 3 * hour)})),
        T0,
    );
    w.deliver(&[record], T0 + 1).await;
    let version = w.users.user(WS, "u1").unwrap().version;
    let mut now = T0 + 1;
    while let Some(due) = w.store.state(WS, "u1").next_due {
        now = due;
        w.tick(now, || now, |_| async {}).await;
    }
    let moves: Vec<(String, u64, String)> = w
        .bus
        .accepted()
        .iter()
        .filter(|e| e.source == "vibefollow.audiences")
        .map(|e| {
            let d = &e.detail;
            let id = d["id"].as_str().unwrap().to_owned();
            (
                e.detail_type.to_owned(),
                d["user_version"].as_u64().unwrap(),
                id,
            )
        })
        .collect();
    let kinds: Vec<&str> = moves.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            AUDIENCE_ENTERED,
            AUDIENCE_EXITED,
            AUDIENCE_ENTERED,
            AUDIENCE_EXITED
        ]
    );
    assert!(
        moves.iter().all(|(_, v, _)| *v == version),
        "one user_version"
    );
    let ids: std::collections::BTreeSet<&str> =
        moves.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 4, "an id per move: {moves:?}");
    assert!(now >= T0 + 4 * hour);
}

#[tokio::test]
async fn rules_are_read_once_per_revision_across_batches_and_again_when_they_move() {
    let w = world();
    w.define("trials", trials(), T0).await;
    // A fresh instance (a cold start): nothing held yet.
    let evaluate = Evaluate::new(
        w.store.clone(),
        w.users.clone(),
        w.builds.clone(),
        w.bus.clone(),
    );
    let lists = || {
        let calls = w.store.journal.calls();
        calls.iter().filter(|c| *c == "audiences.rules").count()
    };
    let deliver = |user: &str, at: i64| {
        let record = w.write(user, Some(json!({"plan": "trial"})), at);
        let change = StreamChange::<String> {
            position: "0",
            images: Ok(record),
        };
        let evaluate = &evaluate;
        async move {
            evaluate
                .changes(
                    &[change],
                    || at,
                    std::future::pending(),
                    std::future::pending,
                )
                .await
                .first_failure
                .is_none()
        }
    };
    let before = lists();
    for (i, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        assert!(deliver(user, T0 + 1 + i as i64).await);
    }
    assert_eq!(lists() - before, 1, "read once for three batches");
    w.define(
        "pros",
        json!({"field": "plan", "op": "eq", "value": "pro"}),
        T0 + 10,
    )
    .await;
    let before = lists();
    assert!(deliver("u4", T0 + 11).await);
    assert!(deliver("u5", T0 + 12).await);
    assert_eq!(lists() - before, 1, "and once more after the rules moved");
}

#[tokio::test]
async fn a_user_whose_evaluation_keeps_failing_is_parked_and_the_rest_of_its_batch_goes_on() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    let poisoned = (WS.to_owned(), "u2".to_owned());
    w.store.poisoned.lock().unwrap().insert(poisoned.clone());
    let records: Vec<Record> = ["u1", "u2", "u3"]
        .iter()
        .map(|user| w.write(user, Some(json!({"plan": "trial"})), T0 + 1))
        .collect();
    // The batch is done: the others settled, the poisoned one parked by id.
    assert_eq!(w.deliver(&records, T0 + 2).await, (2, None));
    assert_eq!(w.store.listed(WS, "trials"), ["u1", "u3"]);
    let parked = w.builds.take_parked();
    assert_eq!(parked, std::slice::from_ref(&poisoned));
    // Settled again apart from the batch: still failing, then, once it reads, settled.
    let retried = w.evaluate.retry(&parked, || T0 + 3).await;
    assert!(matches!(retried[..], [Err(_)]), "{retried:?}");
    w.store.poisoned.lock().unwrap().clear();
    let retried = w.evaluate.retry(&parked, || T0 + 4).await;
    assert!(matches!(retried[..], [Ok(1)]), "{retried:?}");
    assert_eq!(w.store.listed(WS, "trials"), ["u1", "u2", "u3"]);
    assert_eq!(w.events().last(), Some(&entered("trials", "u2", "change")));
}

/// Two workspaces with a "trials" audience each, built; the heavy one is `WS`.
async fn heavy_and_light() -> World {
    let w = world();
    for workspace_id in [WS, "light"] {
        w.define_in(workspace_id, "trials", trials(), T0).await;
    }
    w.build(T0).await;
    w
}

/// A stream batch with a trial user of each workspace of [`heavy_and_light`].
fn trial_in_each(w: &World) -> Vec<StreamChange<'static, String>> {
    [
        w.write("h1", Some(json!({"plan": "trial"})), T0 + 1),
        w.write_in("light", "l1", Some(json!({"plan": "trial"})), T0 + 1),
    ]
    .into_iter()
    .map(|images| StreamChange {
        position: "0",
        images: Ok(images),
    })
    .collect()
}

/// A stream batch with a trial user of each workspace, settled with no wait (only what
/// needs none is in time), then the heavy one's parked user retried once nothing is
/// stalled: it is settled by id, with one `Audience Entered`.
async fn the_light_goes_on_and_the_heavy_is_parked(w: &World) {
    let changes = trial_in_each(w);
    // No wait for the batch as a whole; the share after the light one is settled is over
    // at once.
    let share = || std::future::ready(());
    let settled = w
        .evaluate
        .changes(&changes, || T0 + 2, std::future::pending(), share)
        .await;
    assert_eq!((settled.users, settled.parked), (2, 1));
    assert_eq!(settled.first_failure, None, "the batch is done");
    assert_eq!(w.store.listed("light", "trials"), ["l1"]);
    let parked = w.builds.take_parked();
    assert_eq!(parked, [(WS.to_owned(), "h1".to_owned())]);
    w.store.stalled.lock().unwrap().clear();
    let retried = w.evaluate.retry(&parked, || T0 + 3).await;
    assert!(matches!(retried[..], [Ok(1)]), "{retried:?}");
    assert_eq!(w.store.listed(WS, "trials"), ["h1"]);
    let entered_h1 = w
        .events()
        .iter()
        .filter(|e| **e == entered("trials", "h1", "change"))
        .count();
    assert_eq!(entered_h1, 1, "entered once: the dropped work put no event");
}

#[tokio::test]
async fn a_workspace_whose_rules_are_not_read_in_its_share_of_the_batch_is_parked_and_the_rest_goes_on(
) {
    let w = heavy_and_light().await;
    // The heavy workspace's rules cannot be read (its key throttled).
    w.store.stall(WS, "audiences.revision");
    the_light_goes_on_and_the_heavy_is_parked(&w).await;
}

#[tokio::test]
async fn a_batch_whose_workspaces_are_all_slow_waits_for_them_until_its_own_bound() {
    use futures::FutureExt;
    let w = heavy_and_light().await;
    w.store.stall(WS, "memberships.write_entries");
    w.store.stall("light", "memberships.write_entries");
    let changes = trial_in_each(&w);
    // No workspace settled: the share (over at once) has not started, so the batch
    // waits (slow everywhere is the store, not a tenant)…
    let share = || std::future::ready(());
    let waiting = w
        .evaluate
        .changes(&changes, || T0 + 2, std::future::pending(), share)
        .now_or_never();
    assert!(waiting.is_none(), "parked while no one was faster");
    // …until its own bound: then both are parked.
    let settled = w
        .evaluate
        .changes(&changes, || T0 + 2, std::future::ready(()), share)
        .await;
    assert_eq!((settled.users, settled.parked), (2, 2));
    assert_eq!(settled.first_failure, None);
}

#[tokio::test]
async fn a_workspace_not_settled_in_its_share_of_the_batch_is_parked_its_commit_carried_out_by_the_retry(
) {
    let w = heavy_and_light().await;
    // The heavy workspace's member lists cannot be written (their keys throttled): its
    // user is committed, its decisions pending, when the batch stops waiting for it.
    w.store.stall(WS, "memberships.write_entries");
    the_light_goes_on_and_the_heavy_is_parked(&w).await;
}

#[tokio::test]
async fn the_events_of_the_workspaces_of_a_batch_go_out_in_shared_calls() {
    // No waiting for company: a call leaves when full, or when no one else is coming.
    let w = world_lingering(Arc::new(|_| Box::pin(std::future::pending())));
    let workspaces: Vec<String> = (0..12).map(|n| format!("ws{n:02}")).collect();
    for workspace_id in &workspaces {
        w.define_in(workspace_id, "trials", trials(), T0).await;
    }
    w.build(T0).await;
    let records: Vec<Record> = workspaces
        .iter()
        .map(|ws| w.write_in(ws, "u1", Some(json!({"plan": "trial"})), T0 + 1))
        .collect();
    let (_, failed) = w.deliver(&records, T0 + 2).await;
    assert_eq!(failed, None);
    for workspace_id in &workspaces {
        assert_eq!(w.store.listed(workspace_id, "trials"), ["u1"]);
    }
    let calls: Vec<usize> = w.bus.calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(calls, [10, 2], "12 workspaces' events in two calls, not 12");
}

#[tokio::test]
async fn a_user_that_cannot_even_be_parked_holds_its_batch_from_its_record_on() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    w.store
        .poisoned
        .lock()
        .unwrap()
        .insert((WS.to_owned(), "u2".to_owned()));
    w.builds.faults.fail("parked.park", unavailable(), 1);
    let records: Vec<Record> = ["u1", "u2", "u3"]
        .iter()
        .map(|user| w.write(user, Some(json!({"plan": "trial"})), T0 + 1))
        .collect();
    let (_, first_failure) = w.deliver(&records, T0 + 2).await;
    assert_eq!(first_failure.as_deref(), Some("1"), "from u2's record on");
    assert!(w.builds.take_parked().is_empty());
}

#[tokio::test]
async fn a_build_parks_the_users_it_cannot_settle_and_goes_on() {
    let w = world();
    for user in ["u1", "u2", "u3"] {
        w.write(user, Some(json!({"plan": "trial"})), T0);
    }
    w.store
        .poisoned
        .lock()
        .unwrap()
        .insert((WS.to_owned(), "u2".to_owned()));
    w.define("trials", trials(), T0 + 1).await;
    w.build(T0 + 2).await;
    assert_eq!(w.store.listed(WS, "trials"), ["u1", "u3"]);
    assert_eq!(w.builds.take_parked(), [(WS.to_owned(), "u2".to_owned())]);
    let view = w.curate.get(&caller(), "trials", T0 + 3).await.unwrap();
    assert_eq!(view.audience.building, None, "the build is done");
    assert_eq!(view.members, 2);
}

#[tokio::test]
async fn audiences_list_a_page_at_a_time_and_refuse_a_cursor_no_page_gave() {
    let w = world();
    let ids: Vec<String> = (0..25).map(|i| format!("a{i:02}")).collect();
    for id in &ids {
        w.define(id, trials(), T0).await;
    }
    let paged = crate::contract::Paged::Audiences;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = paged.query(Some("10"), cursor.as_deref());
        let got = w.curate.list(&caller(), page, T0).await.unwrap();
        assert!(got.audiences.len() <= 10);
        seen.extend(got.audiences.into_iter().map(|a| a.audience_id));
        match got.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let members_cursor = crate::contract::Paged::Members { audience_id: "a01" }.cursor("u1");
    let refused = w
        .curate
        .list(&caller(), paged.query(None, Some(&members_cursor)), T0)
        .await;
    assert!(
        matches!(refused, Err(AppError::Request(RequestError::Query(_)))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn time_moves_fan_out_one_task_per_partition_with_no_cap_on_a_minute() {
    let w = signed_up_within_a_week().await;
    let signup = crate::domain::format_millis(T0).unwrap();
    // More users at one edge than a tick used to settle in a minute (2,000).
    let users = 2_500;
    let records: Vec<Record> = (0..users)
        .map(|i| {
            w.write(
                &format!("u{i:04}"),
                Some(json!({"signupDate": signup})),
                T0 + 1,
            )
        })
        .collect();
    for batch in records.chunks(100) {
        w.deliver(batch, T0 + 2).await;
    }
    assert_eq!(w.store.listed(WS, "new").len(), users);
    let edge = T0 + 7 * DAY + 1;
    let sent = w.evaluate.tick(edge + 1).await.unwrap();
    let tasks = w.builds.take_time();
    assert_eq!(sent, MemoryAudiences::DUE_SHARDS as usize);
    let mut largest = 0;
    for task in &tasks {
        let (settled, events) = w
            .evaluate
            .settle_due(task, f64::INFINITY, || edge + 1, |_| async {})
            .await
            .unwrap();
        assert_eq!(settled, events, "each user due moved out");
        largest = largest.max(settled);
    }
    assert!(w.store.listed(WS, "new").is_empty(), "all moved out");
    // Spread over the partitions: a user waits only for those due before it in its own.
    assert!(largest < users / 2, "{largest} of {users} in one partition");
    assert!(w.due(edge + 1).await.is_empty());
}

/// A tick sends a time task only to the partitions with someone due by its end: an
/// idle one costs the tick one read, not an invocation. A partition whose read fails
/// gets its task all the same (the task reads it again).
#[tokio::test]
async fn a_tick_sends_tasks_only_where_users_are_due() {
    let w = signed_up_within_a_week().await;
    let signup = crate::domain::format_millis(T0).unwrap();
    let record = w.write("u1", Some(json!({"signupDate": signup})), T0 + 1);
    w.deliver(&[record], T0 + 2).await;
    let edge = T0 + 7 * DAY + 1;

    assert_eq!(w.evaluate.tick(edge - 1).await.unwrap(), 0);
    assert!(w.builds.take_time().is_empty(), "no one due: nothing sent");

    assert_eq!(w.evaluate.tick(edge + 1).await.unwrap(), 1);
    let tasks = w.builds.take_time();
    let settled = w
        .evaluate
        .settle_due(&tasks[0], f64::INFINITY, || edge + 1, |_| async {})
        .await
        .unwrap();
    assert_eq!(settled, (1, 1), "the one task is u1's partition's");

    w.store.faults.fail("memberships.due", unavailable(), 1);
    assert_eq!(w.evaluate.tick(edge + 2).await.unwrap(), 1);
    assert_eq!(w.builds.take_time().len(), 1, "the unread partition's task");
}

/// However many users one edge brings to a partition, a time task starts at most
/// `users_per_s` a second (a second's worth at once) and stops at its end: the rest
/// stay due, and the next tick's task goes on at the same pace.
#[tokio::test]
async fn a_time_task_settles_its_partition_at_its_pace_and_leaves_the_rest_due() {
    use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
    let w = signed_up_within_a_week().await;
    let signup = crate::domain::format_millis(T0).unwrap();
    let records: Vec<Record> = (0..200)
        .map(|i| {
            w.write(
                &format!("u{i:03}"),
                Some(json!({"signupDate": signup})),
                T0 + 1,
            )
        })
        .collect();
    w.deliver(&records, T0 + 2).await;
    let edge = T0 + 7 * DAY + 1;
    w.evaluate.tick(edge).await.unwrap();
    let task = w.builds.take_time().remove(0);
    let due_in_partition = || async {
        let (due, _) = w.store.due(task.shard, edge, None, 1_000).await.unwrap();
        due.len()
    };
    let due = due_in_partition().await;
    assert!(due > 10, "{due} users in the partition");
    let (per_second, clock) = (4.0, AtomicI64::new(edge));
    let now = || clock.load(SeqCst);
    // Each start's instant and the events put before it (one per user started).
    let starts = std::sync::Mutex::new(Vec::new());
    let wait_until = |at: i64| {
        clock.fetch_max(at, SeqCst);
        starts.lock().unwrap().push((now(), w.bus.accepted().len()));
        async {}
    };
    let paced = |starts: &[(i64, usize)]| {
        let (first_at, first_put) = starts[0];
        for &(at, put) in starts {
            let allowed = per_second * (at - first_at) as f64 / 1000.0;
            assert!((put - first_put) as f64 <= allowed, "{starts:?}");
        }
    };
    let first = TimeTask {
        until_ms: edge + 2_000,
        ..task
    };
    let (settled, _) = w
        .evaluate
        .settle_due(&first, per_second, now, wait_until)
        .await
        .unwrap();
    assert_eq!(settled, 12, "at its start, 1 s and 2 s later: 4 each");
    assert_eq!(due_in_partition().await, due - 12);
    paced(&starts.lock().unwrap());
    // The next tick's task, a minute later.
    starts.lock().unwrap().clear();
    clock.store(edge + 60_000, SeqCst);
    let next = TimeTask {
        until_ms: edge + 120_000,
        ..task
    };
    let (rest, _) = w
        .evaluate
        .settle_due(&next, per_second, now, wait_until)
        .await
        .unwrap();
    assert_eq!(settled + rest, due);
    assert_eq!(due_in_partition().await, 0);
    paced(&starts.lock().unwrap());
}

/// A time task's commit leaves the user's due entry where it found it (one index
/// move per settle, when its events are cleared): events it could not put are due at
/// once, for the next tick, not after the grace an evaluation in flight gets.
#[tokio::test]
async fn a_time_settle_whose_events_were_refused_is_due_again_for_the_next_tick() {
    let w = signed_up_within_a_week().await;
    let signup = crate::domain::format_millis(T0).unwrap();
    let record = w.write("u1", Some(json!({"signupDate": signup})), T0 + 1);
    w.deliver(&[record], T0 + 2).await;
    let edge = T0 + 7 * DAY + 1;
    let found = w.due(edge).await;
    assert_eq!(found.len(), 1);
    w.bus.faults.fail("bus.put", unavailable(), 1);
    w.evaluate.tick(edge + 1).await.unwrap();
    let mut failed = 0;
    for task in w.builds.take_time() {
        let settled = w
            .evaluate
            .settle_due(&task, f64::INFINITY, || edge + 1, |_| async {});
        failed += usize::from(settled.await.is_err());
    }
    assert_eq!(failed, 1);
    assert_eq!(
        w.store.state(WS, "u1").pending.len(),
        1,
        "the exit committed"
    );
    assert_eq!(w.due(edge).await, found, "due where the task found it");
    w.tick(edge + 2, || edge + 2, |_| async {}).await;
    assert!(w.store.state(WS, "u1").pending.is_empty());
    assert_eq!(
        w.events(),
        [entered("new", "u1", "change"), exited("new", "u1", "time")]
    );
    assert!(w.due(edge + 2 + PENDING_GRACE_MS).await.is_empty());
}

/// A stream read again: the users each range's records wrote.
struct ReplayedStream(Vec<UserKey>);

impl crate::app::ports::StreamReplay for ReplayedStream {
    async fn users_in(
        &self,
        _: &crate::app::ports::StreamRange,
    ) -> Result<Vec<UserKey>, crate::app::ports::PortError> {
        Ok(self.0.clone())
    }
}

#[tokio::test]
async fn records_a_failure_destination_names_are_turned_back_into_users_to_settle() {
    let w = world();
    w.define("trials", trials(), T0).await;
    w.build(T0).await;
    // The record never settled (its batch kept failing, or aged out of the stream).
    w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
    let range = crate::app::ports::StreamRange {
        stream_arn: "arn".into(),
        shard_id: "shard".into(),
        first: "100".into(),
        last: "200".into(),
    };
    let replay = ReplayedStream(vec![(WS.to_owned(), "u1".to_owned())]);
    w.builds.faults.fail("parked.park", unavailable(), 1);
    assert!(
        w.evaluate.recover(&replay, &range).await.is_err(),
        "comes back"
    );
    assert_eq!(w.evaluate.recover(&replay, &range).await.unwrap(), 1);
    let parked = w.builds.take_parked();
    let retried = w.evaluate.retry(&parked, || T0 + 2).await;
    assert!(matches!(retried[..], [Ok(1)]), "{retried:?}");
    assert_eq!(w.store.listed(WS, "trials"), ["u1"]);
}

#[tokio::test]
async fn a_definition_outrun_again_and_again_answers_unavailable_instead_of_spinning() {
    let w = world();
    let body = json!({"name": "t", "rule": trials()}).to_string();
    let definition = || parse_audience(body.as_bytes()).map_err(RequestError::from);
    // Outrun four times: the fifth attempt lands.
    *w.store.outrun.lock().unwrap() = MAX_DEFINITION_ATTEMPTS - 1;
    let stamp = Stamp::new(T0, "put-1");
    assert!(w
        .curate
        .define(&caller(), "t", definition(), None, stamp)
        .await
        .is_ok());
    assert_eq!(
        w.store.journal.count("audiences.define"),
        MAX_DEFINITION_ATTEMPTS
    );
    // Outrun on every attempt: a bounded number of tries, then 503 (Retry-After).
    for (call, change) in ["audiences.define", "audiences.delete"]
        .into_iter()
        .enumerate()
    {
        *w.store.outrun.lock().unwrap() = usize::MAX;
        let before = w.store.journal.count(change);
        let stamp = Stamp::new(T0 + 1 + call as i64, format!("r-{call}"));
        let refused = if call == 0 {
            w.curate
                .define(&caller(), "t", definition(), None, stamp)
                .await
        } else {
            w.curate.delete(&caller(), "t", None, stamp).await
        };
        assert!(
            matches!(refused, Err(AppError::Port(PortError::Unavailable(_)))),
            "{change}: {refused:?}"
        );
        assert_eq!(
            w.store.journal.count(change) - before,
            MAX_DEFINITION_ATTEMPTS
        );
    }
    *w.store.outrun.lock().unwrap() = 0;
    assert!(
        w.builds.take().is_some(),
        "the landed definition's build only"
    );
    assert!(w.builds.take().is_none());
}

impl World {
    /// The faults of the fake that serves `call` (`users.…`, `builds.…`, `memberships.…`).
    fn faults_of(&self, call: &str) -> &Faults {
        match call.split('.').next() {
            Some("users") => &self.users.faults,
            Some("builds" | "time" | "parked") => &self.builds.faults,
            Some("bus") => &self.bus.faults,
            _ => &self.store.faults,
        }
    }

    /// The membership events the bus took, once per event id (what a subscriber that
    /// drops repeats by id sees).
    fn events_by_id(&self) -> Vec<(String, String, String, String)> {
        let mut seen = std::collections::HashSet::new();
        let events = self.bus.accepted();
        let ids = events
            .iter()
            .filter(|e| e.source == "vibefollow.audiences")
            .map(|e| e.detail["id"].as_str().unwrap_or_default().to_owned());
        let kept: Vec<bool> = ids.map(|id| seen.insert(id)).collect();
        self.events()
            .into_iter()
            .zip(kept)
            .filter_map(|(event, first)| first.then_some(event))
            .collect()
    }
}

/// Lined up for longer than any retry inside one invocation.
const STANDING_FAULTS: usize = 50;

/// Each call that settling a user makes, refused (a bad item, a bug) or failing
/// (throttled): the user is parked by id and the rest of its batch settles; once the
/// call works again, the parked user's retry leaves the memberships the rules say, each
/// move put under one event id.
#[tokio::test]
async fn a_settling_step_that_fails_parks_its_user_and_the_retry_finishes_the_move() {
    let calls = [
        "memberships.standing",
        "users.get",
        "memberships.commit",
        "memberships.write_entries",
        "memberships.clear_pending",
    ];
    for call in calls {
        for error in [unavailable(), refused()] {
            let w = world();
            w.define("trials", trials(), T0).await;
            w.build(T0).await;
            let before = w.write("u1", Some(json!({"plan": "trial"})), T0 + 1);
            w.faults_of(call).fail(call, error.clone(), STANDING_FAULTS);
            let (_, first_failure) = w.deliver(&[before], T0 + 2).await;
            assert_eq!(first_failure, None, "{call} {error}: the batch goes on");
            let parked = w.builds.take_parked();
            assert_eq!(parked, [(WS.to_owned(), "u1".to_owned())], "{call} {error}");
            // The call works again.
            w.faults_of(call).clear();
            let retried = w.evaluate.retry(&parked, || T0 + 3).await;
            assert!(
                retried.iter().all(Result::is_ok),
                "{call} {error}: {retried:?}"
            );
            assert_eq!(w.store.listed(WS, "trials"), ["u1"], "{call} {error}");
            assert_eq!(
                w.events_by_id(),
                [entered("trials", "u1", "change")],
                "{call} {error}"
            );
            assert!(w.store.state(WS, "u1").pending.is_empty(), "{call} {error}");
        }
    }
}

/// A build whose page read, page record or next task fails, refused or failing: the
/// task fails whole (SQS delivers it again), and its redelivery finishes the build with
/// every member listed once.
#[tokio::test]
async fn a_build_step_that_fails_fails_its_task_and_the_redelivery_finishes_the_build() {
    for call in ["users.page", "audiences.record_build", "builds.send"] {
        for error in [unavailable(), refused()] {
            let w = world();
            let users = BUILD_PAGE + 5;
            for i in 0..users {
                w.write(&format!("u{i:04}"), Some(json!({"plan": "trial"})), T0);
            }
            w.define("trials", trials(), T0 + 1).await;
            let first = w.builds.take().expect("the first task");
            w.faults_of(call).fail(call, error.clone(), 1);
            let failed = w.evaluate.build(&first, || T0 + 2).await;
            assert!(failed.is_err(), "{call} {error}");
            // Redelivered, then the rest of the build.
            w.evaluate.build(&first, || T0 + 3).await.unwrap();
            w.build(T0 + 4).await;
            assert_eq!(w.store.listed(WS, "trials").len(), users, "{call} {error}");
            assert_eq!(w.events_by_id().len(), users, "{call} {error}");
        }
    }
}

/// A tick whose time tasks cannot be sent, and a time task whose partition cannot be
/// read, refused or failing: the invocation fails and the users stay due, so the next
/// tick moves them.
#[tokio::test]
async fn a_tick_or_a_time_task_that_fails_leaves_its_users_due_for_the_next() {
    for call in ["time.send", "memberships.due"] {
        for error in [unavailable(), refused()] {
            let w = world();
            w.define(
                "recent",
                json!({"field": "signupDate", "op": "within_last", "value": "P1D"}),
                T0,
            )
            .await;
            w.build(T0).await;
            let signup = crate::domain::format_millis(T0).unwrap();
            let record = w.write("u1", Some(json!({"signupDate": signup})), T0 + 1);
            w.deliver(&[record], T0 + 2).await;
            assert_eq!(w.store.listed(WS, "recent"), ["u1"]);
            let after_edge = T0 + DAY + 1;
            let failed = match call {
                "time.send" => {
                    w.faults_of(call).fail(call, error.clone(), 1);
                    w.evaluate.tick(after_edge).await.map(|_| ())
                }
                _ => {
                    w.evaluate.tick(after_edge).await.unwrap();
                    let tasks = w.builds.take_time();
                    w.faults_of(call).fail(call, error.clone(), 1);
                    let mut first_error = None;
                    for task in &tasks {
                        let settled = w
                            .evaluate
                            .settle_due(task, f64::INFINITY, || after_edge, |_| async {})
                            .await;
                        first_error = first_error.or(settled.err());
                    }
                    first_error.map_or(Ok(()), Err)
                }
            };
            assert!(failed.is_err(), "{call} {error}");
            assert_eq!(
                w.due(after_edge).await.len(),
                1,
                "{call} {error}: still due"
            );
            w.tick(after_edge, || after_edge, |_| async {}).await;
            assert!(w.store.listed(WS, "recent").is_empty(), "{call} {error}");
            assert_eq!(
                w.events_by_id().last(),
                Some(&exited("recent", "u1", "time"))
            );
        }
    }
}
