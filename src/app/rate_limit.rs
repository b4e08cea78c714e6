//! Per-workspace rate limit, shared by every api instance through one counter, or
//! through shards of it for a rate above what one partition key takes.
//!
//! Rule (contract, "Rate limit"): one calendar second admits at most `burst(rate)` =
//! 1.1 × the rate, and two consecutive seconds together at most twice the rate. So
//! traffic below the rate is not refused (leased tokens an instance has not spent when
//! a second ends still count: at most a tenth of its own traffic), a sustained overload
//! still admits at least 0.9 × the rate every second, and a client told
//! `Retry-After: 1` finds room in the next second (it admits at least
//! `2 × rate − burst` ≥ 0.9 × rate).
//!
//! Instances lease tokens from the counter and spend them locally. A lease is sized to
//! what this instance itself served in its previous second (a tenth of it, at least
//! one, at most a tenth of the rate): an instance that sees little traffic takes one
//! token at a time and so never strands tokens that other instances need, however many
//! instances share the workspace; a busy one makes one counter call per ten requests.
//! While the workspace is quiet, a lease takes a whole second of the instance's own
//! traffic at once (a *quiet lease*): the counter grants quiet leases only up to
//! `Bounds::quiet_cap`, where their unspent tokens, with those of the ordinary leases,
//! could reach a tenth of the rate, so the rule above holds as it did, and an instance
//! serving a quiet workspace makes one counter call a second whatever its traffic.
//!
//! A rate above `shard_rate` spreads the counter over shards (`<workspace>#<n>`, the
//! first keeping the workspace's own key), each holding its part of both bounds (the
//! parts sum to them, so the rule holds as a whole): a partition key takes 1,000
//! writes a second, so one workspace's requests are not capped by one key. An instance
//! leases from the shards in turn, and from the next one when one has no room left;
//! only when every shard has none is a request refused.

use super::ports::{Counter, Counters, PortError};
use super::{AppError, Caller};
use crate::domain::rate_limit::{shard_count, Bounds, DEFAULT_SHARD_RATE, MAX_SHARDS};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    Limited { retry_after_secs: u64 },
}

impl Counter {
    /// Tokens `window` may still hand out, given this counter as stored.
    fn room_in(&self, window: i64, bounds: Bounds) -> u64 {
        let used = self.used_in(window);
        let previous = self.previous_of(window);
        bounds
            .second
            .saturating_sub(used)
            .min(bounds.pair.saturating_sub(used + previous))
    }

    /// Tokens quiet leases may still take in `window`, given this counter as stored.
    fn quiet_room_in(&self, window: i64, bounds: Bounds) -> u64 {
        let cap = bounds.quiet_cap(self.previous_of(window));
        cap.saturating_sub(self.used_in(window))
            .min(self.room_in(window, bounds))
    }

    fn used_in(&self, window: i64) -> u64 {
        if self.window == window {
            self.used
        } else {
            0
        }
    }

    /// The count of the second before `window`, given this counter as stored.
    fn previous_of(&self, window: i64) -> u64 {
        if self.window == window {
            self.previous
        } else if self.window == window - 1 {
            self.used
        } else {
            0
        }
    }
}

/// This instance's view of one workspace.
#[derive(Debug, Clone, Copy, Default)]
struct Local {
    window: i64,
    /// Leased tokens not yet spent in `window`.
    tokens: u64,
    /// Shards (bits) with no room left in `window`.
    exhausted: u32,
    /// Requests this instance saw in `window` and in the window before.
    seen: u64,
    seen_before: u64,
    /// The shard the next lease tries first: leases go round the shards.
    next_shard: u32,
    /// Per shard, what quiet leases may still take in `window`, as the counter last
    /// showed it (unknown: up to a tenth of the shard's rate).
    quiet_room: [Option<u64>; MAX_SHARDS as usize],
}

/// What a lease asks the counter for.
#[derive(Debug, Clone, Copy)]
struct Ask {
    tokens: u64,
    quiet: bool,
}

impl Local {
    /// Moves this view to `window` (in place: it is read on every request).
    fn move_to(&mut self, window: i64) {
        if self.window == window {
            return;
        }
        let consecutive = self.window == window - 1;
        // A shard that was past quiet is asked for an ordinary lease first (whose
        // answer says whether this second is quiet), not a quiet one that would fail.
        let quiet_room = self.quiet_room.map(|room| match room {
            Some(0) if consecutive => Some(0),
            _ => None,
        });
        *self = Local {
            window,
            seen_before: if consecutive { self.seen } else { 0 },
            next_shard: self.next_shard,
            quiet_room,
            ..Local::default()
        };
    }

    fn lease_size(&self, bounds: Bounds) -> u64 {
        // A tenth of the shard's rate (half its pair bound).
        let most = (bounds.pair / 20).max(1);
        (self.seen_before / 10).clamp(1, most)
    }

    /// The lease to ask `shard` (its part of the bounds `part`) for, to serve a request
    /// of `cost`, and the ordinary one should a quiet lease find the second past quiet.
    fn asks(&self, shard: u32, part: Bounds, cost: u64) -> (Ask, Ask) {
        let short = cost.saturating_sub(self.tokens);
        let ordinary = Ask {
            tokens: self.lease_size(part).max(short),
            quiet: false,
        };
        let room = self.quiet_room.get(shard as usize).copied().flatten();
        // A second of its own traffic, as far as quiet leases go.
        let tokens = self.seen_before.min(room.unwrap_or(part.quiet_cap(0)));
        let quiet = Ask {
            tokens,
            quiet: true,
        };
        (
            if tokens > ordinary.tokens {
                quiet
            } else {
                ordinary
            },
            ordinary,
        )
    }

    /// The next shard of `shards` with room, if any, and the one after it for the
    /// lease after.
    fn shard_with_room(&mut self, shards: u32) -> Option<u32> {
        let shard = (0..shards)
            .map(|step| (self.next_shard + step) % shards)
            .find(|shard| self.exhausted & (1 << shard) == 0)?;
        self.next_shard = (shard + 1) % shards;
        Some(shard)
    }

    /// Spends `cost` of the leased tokens, if there are as many.
    fn spend(&mut self, cost: u64) -> bool {
        let enough = self.tokens >= cost;
        if enough {
            self.tokens -= cost;
        }
        enough
    }
}

/// What a blocked key (rate 0) is told to wait: nothing changes until its rate does.
const BLOCKED_RETRY_AFTER_SECS: u64 = 60;

/// A request that finds the counter contended this many times is refused (429); the
/// next one tries again.
const MAX_ATTEMPTS: usize = 4;

/// What one lease got from the shared counter.
enum Lease {
    /// Tokens, whether by a quiet lease, and what quiet leases may still take in the
    /// instance's second, as the counter showed it (none if another instance's clock
    /// had moved it on).
    Granted {
        tokens: u64,
        quiet: bool,
        quiet_room: Option<u64>,
    },
    /// The window has no room left: refuse until it ends.
    Exhausted,
    /// Other instances kept moving the counter: refuse this request only.
    Contended,
}

pub struct RateLimiter<S> {
    store: S,
    /// By workspace and rate: keys of one workspace may carry different rates, and
    /// "no room left" holds for one rate only.
    local: Mutex<HashMap<(String, u32), Local>>,
    /// Requests a second one counter shard hands out at most.
    shard_rate: f64,
    /// This instance's own: where its leases start on each workspace's shards.
    seed: RandomState,
}

impl<S: Counters> RateLimiter<S> {
    pub fn new(store: S) -> Self {
        Self::with_shard_rate(store, DEFAULT_SHARD_RATE)
    }

    /// As [`RateLimiter::new`], with counter shards of `shard_rate` requests a second
    /// (`RATE_LIMIT_SHARD_RATE`; the local stack scales it as it scales AWS's limits).
    pub fn with_shard_rate(store: S, shard_rate: f64) -> Self {
        Self {
            store,
            local: Mutex::new(HashMap::new()),
            shard_rate,
            seed: RandomState::new(),
        }
    }

    /// Admits a request that counts as `cost` requests (a batch: one per started 100
    /// users), or refuses it whole.
    pub async fn check(
        &self,
        workspace_id: &str,
        rate: u32,
        cost: u64,
        now_ms: i64,
    ) -> Result<RateDecision, PortError> {
        let window = now_ms.div_euclid(1000);
        let shards = shard_count(rate, self.shard_rate);
        let bounds = Bounds::of(rate);
        let local_key = (workspace_id.to_owned(), rate);
        let local = |change: &mut dyn FnMut(&mut Local)| {
            self.with_local(&local_key, window, shards, change);
        };
        local(&mut |local| local.seen += cost);
        // Each shard at most once: the request is refused when none has room.
        for _ in 0..shards {
            let mut next = Err(limited());
            local(&mut |local| {
                next = if local.spend(cost) {
                    Err(RateDecision::Allowed)
                } else if let Some(shard) = local.shard_with_room(shards) {
                    let part = bounds.part(shards, shard);
                    Ok((shard, part, local.asks(shard, part, cost)))
                } else {
                    Err(limited())
                };
            });
            let (shard, part, asks) = match next {
                Ok(lease) => lease,
                Err(decision) => return Ok(decision),
            };
            let key = counter_key(workspace_id, shard);
            let granted = self.lease(&key, part, asks, window).await?;
            let mut contended = false;
            local(&mut |local| {
                match granted {
                    // Tokens short of the cost stay leased, for this request's next
                    // shard or for smaller requests.
                    Lease::Granted {
                        tokens,
                        quiet,
                        quiet_room,
                    } => {
                        local.tokens += tokens;
                        if let Some(seen) = local.quiet_room.get_mut(shard as usize) {
                            *seen = quiet_room.or(*seen);
                        }
                        // Quiet leases stay on their shard, whose count they know: an
                        // instance's one or two calls a second go to one key.
                        if quiet {
                            local.next_shard = shard;
                        }
                    }
                    Lease::Exhausted => local.exhausted |= 1 << shard,
                    Lease::Contended => contended = true,
                }
            });
            if contended {
                return Ok(limited());
            }
        }
        let mut spent = false;
        local(&mut |local| spent = local.spend(cost));
        Ok(if spent {
            RateDecision::Allowed
        } else {
            limited()
        })
    }

    /// Runs `change` on this instance's view of a workspace at `window`. A view starts
    /// its leases at a shard of its own, so that instances starting together do not
    /// all begin on the first.
    fn with_local(
        &self,
        key: &(String, u32),
        window: i64,
        shards: u32,
        change: &mut dyn FnMut(&mut Local),
    ) {
        let mut all = self
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The key is copied once per workspace and rate, not on every step of a request.
        if !all.contains_key(key) {
            let first = Local {
                next_shard: (self.seed.hash_one(&key.0) % u64::from(shards)) as u32,
                ..Local::default()
            };
            all.insert(key.clone(), first);
        }
        let Some(local) = all.get_mut(key) else {
            return;
        };
        local.move_to(window);
        change(local);
    }

    /// The rate-limit step of the contract's order of checks, for a request that counts
    /// as `cost` requests. A request never costs more than a second's rate, or a
    /// low-rate key could never send a full batch.
    pub async fn admit(&self, caller: &Caller, now_ms: i64, cost: u64) -> Result<(), AppError> {
        let rate = caller.rate;
        // A key stored with a rate of 0 is blocked: no request is ever admitted.
        if rate == 0 {
            return Err(AppError::RateLimited {
                rate,
                retry_after_secs: BLOCKED_RETRY_AFTER_SECS,
            });
        }
        let cost = cost.min(u64::from(rate));
        match self.check(&caller.workspace_id, rate, cost, now_ms).await? {
            RateDecision::Allowed => Ok(()),
            RateDecision::Limited { retry_after_secs } => Err(AppError::RateLimited {
                rate,
                retry_after_secs,
            }),
        }
    }

    /// Takes up to `ask`'s tokens of `window` from the counter `key`: one write,
    /// whether or not it opens the window; another only when fewer tokens are left
    /// than asked, the second is past quiet (then `ordinary` is asked), or another
    /// instance's clock is ahead.
    async fn lease(
        &self,
        key: &str,
        bounds: Bounds,
        (mut ask, ordinary): (Ask, Ask),
        window: i64,
    ) -> Result<Lease, PortError> {
        let mut at = window;
        for _ in 0..MAX_ATTEMPTS {
            let taken = self.store.take(key, at, ask.tokens, bounds, ask.quiet);
            let found = match taken.await? {
                Ok(counter) => {
                    return Ok(Lease::Granted {
                        tokens: ask.tokens,
                        quiet: ask.quiet,
                        quiet_room: (at == window).then(|| counter.quiet_room_in(at, bounds)),
                    })
                }
                Err(found) => found,
            };
            match found {
                // Another instance's clock is ahead: its window is the current one (and
                // a quiet lease's bounds were this instance's second's).
                Some(counter) if counter.window > at => {
                    at = counter.window;
                    ask = ordinary;
                }
                found => {
                    let room = match (found, ask.quiet) {
                        (Some(counter), true) => counter.quiet_room_in(at, bounds),
                        (Some(counter), false) => counter.room_in(at, bounds),
                        (None, true) => bounds.quiet_cap(0),
                        (None, false) => bounds.second,
                    };
                    if ask.quiet && !(ordinary.tokens..ask.tokens).contains(&room) {
                        // Past quiet, or refused for what the counts do not show (a
                        // second leased by instances from before quiet counts): an
                        // ordinary lease, under the bounds.
                        ask = ordinary;
                    } else if room == 0 {
                        return Ok(Lease::Exhausted);
                    } else {
                        ask.tokens = ask.tokens.min(room);
                    }
                }
            }
        }
        Ok(Lease::Contended)
    }
}

/// The key of a workspace's counter shard: the first is the workspace's own.
fn counter_key(workspace_id: &str, shard: u32) -> Cow<'_, str> {
    match shard {
        0 => Cow::Borrowed(workspace_id),
        n => Cow::Owned(format!("{workspace_id}#{n}")),
    }
}

fn limited() -> RateDecision {
    RateDecision::Limited {
        retry_after_secs: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::MemoryCounters;
    use crate::domain::rate_limit::{burst, pair_limit};
    use std::sync::Arc;

    /// Admitted requests per second when `offered` requests/s, evenly spaced, go round
    /// robin to `instances` Lambda-style instances (one request at a time each) that
    /// share one counter.
    fn simulate(instances: usize, rate: u32, offered: u32, seconds: i64) -> Vec<u64> {
        simulate_costing(instances, rate, offered, seconds, 1)
    }

    /// As [`simulate`], for requests that each count as `cost` (batches), in counted
    /// requests per second.
    fn simulate_costing(
        instances: usize,
        rate: u32,
        offered: u32,
        seconds: i64,
        cost: u64,
    ) -> Vec<u64> {
        simulate_sharded(instances, rate, offered, seconds, cost, DEFAULT_SHARD_RATE)
    }

    /// As [`simulate_costing`], with counter shards of `shard_rate`.
    fn simulate_sharded(
        instances: usize,
        rate: u32,
        offered: u32,
        seconds: i64,
        cost: u64,
        shard_rate: f64,
    ) -> Vec<u64> {
        let round_robin = |i: i64, _: i64| i as usize % instances;
        let limits = (rate, shard_rate);
        simulate_routed(instances, limits, offered, seconds, cost, &round_robin).0
    }

    /// As [`simulate_sharded`], each request going to the instance that `route` picks
    /// from its index among all and within its second; with the counter writes made.
    fn simulate_routed(
        instances: usize,
        (rate, shard_rate): (u32, f64),
        offered: u32,
        seconds: i64,
        cost: u64,
        route: &dyn Fn(i64, i64) -> usize,
    ) -> (Vec<u64>, u64) {
        let store = Arc::new(MemoryCounters::default());
        let fleet: Vec<_> = (0..instances)
            .map(|_| RateLimiter::with_shard_rate(Arc::clone(&store), shard_rate))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let start_ms = 1_800_000_000_000;
        let total = i64::from(offered) * seconds;
        let mut admitted = vec![0; seconds as usize];
        for i in 0..total {
            let now_ms = start_ms + i * 1000 / i64::from(offered);
            let limiter = &fleet[route(i, i % i64::from(offered))];
            let decision = runtime
                .block_on(limiter.check("ws", rate, cost, now_ms))
                .unwrap();
            if decision == RateDecision::Allowed {
                admitted[((now_ms - start_ms) / 1000) as usize] += cost;
            }
        }
        (admitted, store.writes())
    }

    /// A quiet workspace: an instance leases a second of its own traffic at once, so
    /// it makes one counter call a second, not one per ten requests (or per request
    /// under ten a second).
    #[test]
    fn an_instance_of_a_quiet_workspace_leases_a_second_of_its_traffic_at_once() {
        for (instances, per_instance) in [(1, 20), (4, 20), (4, 5), (16, 3)] {
            let offered = per_instance * instances as u32;
            let round_robin = |i: i64, _: i64| i as usize % instances;
            let limits = (10_000, DEFAULT_SHARD_RATE);
            let (admitted, writes) =
                simulate_routed(instances, limits, offered, 20, 1, &round_robin);
            assert!(admitted.iter().all(|&second| second == u64::from(offered)));
            // The first second leases as before (nothing served the second before); then
            // one a second each, and a few more where instances that start on one shard
            // share its quiet room (the one that runs short moves to the next shard).
            let first = u64::from(offered);
            let most = first + 21 * instances as u64;
            eprintln!("{instances} instances at {per_instance}/s: {writes} writes");
            assert!(writes <= most, "{instances} at {per_instance}/s: {writes}");
        }
    }

    /// A busy workspace (a second's quiet room below what an instance would take): an
    /// instance that found its shard past quiet asks for an ordinary lease first, so
    /// quiet leases add no refused writes to the ordinary ones.
    #[test]
    fn in_a_busy_workspace_quiet_leases_add_no_writes() {
        let (rate, instances, seconds) = (100, 10, 30);
        let offered = rate * 9 / 10;
        let round_robin = |i: i64, _: i64| i as usize % instances;
        let limits = (rate, DEFAULT_SHARD_RATE);
        let (admitted, writes) =
            simulate_routed(instances, limits, offered, seconds, 1, &round_robin);
        let requests = u64::from(offered) * seconds as u64;
        assert_eq!(admitted.iter().sum::<u64>(), requests);
        // At 9 a second an instance's ordinary lease is one token: one write a request,
        // and at most a refused quiet ask each instance's second second.
        assert!(
            writes <= requests + instances as u64,
            "{writes} writes for {requests} requests"
        );
    }

    /// A second leased by instances from before quiet counts (during a deploy): every
    /// quiet lease is refused whatever the counts say, and the request is served by an
    /// ordinary one, not refused.
    #[test]
    fn a_counter_without_quiet_counts_still_admits_through_ordinary_leases() {
        let store = Arc::new(MemoryCounters::default());
        store.refuse_quiet(true);
        let limiter = RateLimiter::new(Arc::clone(&store));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let start_ms = 1_800_000_000_000;
        for i in 0..100 {
            let now_ms = start_ms + i * 50;
            let decision = runtime.block_on(limiter.check("ws", 10_000, 1, now_ms));
            assert_eq!(decision.unwrap(), RateDecision::Allowed, "request {i}");
        }
        // Each quiet ask costs its refused write and an ordinary one, no more.
        assert!(store.writes() <= 2 * 100, "{} writes", store.writes());
    }

    /// Quiet leases with the most left unspent: in each second, the instances that
    /// served the second before take the first tenth of its requests (leasing a
    /// second of their traffic, quiet or not) and then none, the rest going to the
    /// others. Traffic at 0.9 × the rate is still never refused, and no two seconds
    /// admit more than twice the rate.
    #[test]
    fn tokens_left_unspent_by_a_moving_load_never_refuse_traffic_below_the_rate() {
        for rate in [100, 1_000] {
            for instances in [2, 10, 40] {
                let offered = rate * 9 / 10;
                let half = instances / 2;
                // Second s's bulk goes to half s % 2; its first tenth to the other.
                let moving = |i: i64, in_second: i64| {
                    let second = i / i64::from(offered);
                    let bulk = (second % 2) as usize;
                    let group = if in_second < i64::from(offered / 10) {
                        1 - bulk
                    } else {
                        bulk
                    };
                    group * half + in_second as usize % half
                };
                let limits = (rate, DEFAULT_SHARD_RATE);
                let (admitted, _) = simulate_routed(instances, limits, offered, 30, 1, &moving);
                assert!(
                    admitted.iter().all(|&second| second == u64::from(offered)),
                    "rate {rate}, {instances} instances: {admitted:?}"
                );
                let over = simulate_routed(instances, limits, rate * 3, 30, 1, &moving).0;
                let worst_pair = over.windows(2).map(|p| p[0] + p[1]).max().unwrap();
                assert!(worst_pair <= pair_limit(rate), "{over:?}");
            }
        }
    }

    /// A lease is one counter write, also the first of a second (it opens it), so a
    /// quiet workspace, whose every request leases, costs one write a request.
    #[test]
    fn a_lease_is_one_counter_write_even_when_it_opens_its_second() {
        let store = Arc::new(MemoryCounters::default());
        let limiter = RateLimiter::new(Arc::clone(&store));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let start_ms = 1_800_000_000_000;
        for i in 0..20 {
            // One request every 1.5 s: every second is a new one for the counter.
            let now_ms = start_ms + i * 1_500;
            let decision = runtime
                .block_on(limiter.check("ws", 100, 1, now_ms))
                .unwrap();
            assert_eq!(decision, RateDecision::Allowed);
        }
        assert_eq!(store.writes(), 20);
    }

    #[test]
    fn a_rate_of_zero_blocks_every_request() {
        let limiter = RateLimiter::new(Arc::new(MemoryCounters::default()));
        let blocked = Caller {
            workspace_id: "ws".into(),
            rate: 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for cost in [0, 1, 10] {
            let decision = runtime.block_on(limiter.admit(&blocked, 1_800_000_000_000, cost));
            assert!(
                matches!(
                    decision,
                    Err(AppError::RateLimited {
                        rate: 0,
                        retry_after_secs: 60
                    })
                ),
                "cost {cost}: {decision:?}"
            );
        }
    }

    const INSTANCES: [usize; 4] = [1, 10, 100, 1000];

    #[test]
    fn below_the_rate_nothing_is_refused_at_any_instance_count() {
        for rate in [20, 100] {
            let offered = rate * 9 / 10;
            for instances in INSTANCES {
                let admitted = simulate(instances, rate, offered, 30);
                let share = admitted.iter().sum::<u64>() as f64 / f64::from(offered * 30);
                let worst = *admitted.iter().min().unwrap();
                eprintln!("rate {rate}, {instances} instances, offered {offered}/s: admitted {:.1} %, worst second {worst}", share * 100.0);
                assert!(share >= 0.99, "{instances} instances: {admitted:?}");
                assert!(
                    worst as f64 >= 0.8 * f64::from(offered),
                    "{instances} instances: {admitted:?}"
                );
            }
        }
    }

    #[test]
    fn overload_admits_the_rate_every_second_and_never_twice_it_in_two() {
        for rate in [20, 100] {
            for instances in INSTANCES {
                let admitted = simulate(instances, rate, rate * 3, 30);
                let worst = *admitted.iter().min().unwrap();
                let worst_pair = admitted.windows(2).map(|p| p[0] + p[1]).max().unwrap();
                eprintln!("rate {rate}, {instances} instances, offered {}/s: worst second {worst}, worst two seconds {worst_pair}", rate * 3);
                assert!(
                    worst as f64 >= 0.9 * f64::from(rate),
                    "{instances} instances: {admitted:?}"
                );
                assert!(
                    worst_pair <= pair_limit(rate),
                    "{instances} instances: {admitted:?}"
                );
            }
        }
    }

    #[test]
    fn batches_count_their_cost_below_and_above_the_rate() {
        let rate = 100;
        for cost in [3, 10] {
            for instances in [1, 10, 100] {
                let below = rate * 9 / 10 / cost as u32;
                let admitted = simulate_costing(instances, rate, below, 30, cost);
                let share =
                    admitted.iter().sum::<u64>() as f64 / (f64::from(below) * 30.0 * cost as f64);
                assert!(
                    share >= 0.99,
                    "cost {cost}, {instances} instances: {admitted:?}"
                );
                let over = simulate_costing(instances, rate, rate * 3 / cost as u32, 30, cost);
                let worst = *over.iter().min().unwrap();
                let worst_pair = over.windows(2).map(|p| p[0] + p[1]).max().unwrap();
                assert!(
                    worst_pair <= pair_limit(rate),
                    "cost {cost}, {instances} instances: {over:?}"
                );
                assert!(
                    worst as f64 >= 0.8 * f64::from(rate),
                    "cost {cost}, {instances} instances: {over:?}"
                );
            }
        }
    }

    #[test]
    fn after_a_full_burst_the_next_second_has_room() {
        let counter = Counter {
            window: 10,
            used: burst(5),
            previous: 0,
        };
        let bounds = Bounds::of(5);
        assert_eq!(counter.room_in(10, bounds), 0);
        assert!(
            counter.room_in(11, bounds) >= 4,
            "Retry-After: 1 must be honest"
        );
        assert_eq!(counter.room_in(13, bounds), burst(5));
    }

    #[test]
    fn instances_starting_together_begin_on_shards_of_their_own() {
        let store = Arc::new(MemoryCounters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let now_ms = 1_800_000_000_000;
        // 16 shards; 16 cold instances, one request each in the same second.
        for _ in 0..16 {
            let limiter = RateLimiter::with_shard_rate(Arc::clone(&store), 1.0);
            let decision = limiter.check("ws", 100, 1, now_ms);
            assert_eq!(runtime.block_on(decision).unwrap(), RateDecision::Allowed);
        }
        let touched = (0..16)
            .filter(|shard| store.counter(&counter_key("ws", *shard)).is_some())
            .count();
        // All on one shard would be one in 16^15; the first shard alone, the old way.
        assert!(touched > 1, "{touched} shard(s) took all 16 first leases");
    }

    /// Rates spread over 4 to 16 shards (a shard rate of 10 a second).
    const SHARDED: [(u32, f64); 3] = [(40, 10.0), (100, 10.0), (200, 10.0)];

    #[test]
    fn a_sharded_counter_keeps_the_rule_below_and_above_the_rate() {
        for (rate, shard_rate) in SHARDED {
            assert!(shard_count(rate, shard_rate) >= 4);
            for instances in [1, 10, 100] {
                let offered = rate * 9 / 10;
                let below = simulate_sharded(instances, rate, offered, 30, 1, shard_rate);
                let share = below.iter().sum::<u64>() as f64 / f64::from(offered * 30);
                assert!(share >= 0.99, "{rate}, {instances} instances: {below:?}");
                let over = simulate_sharded(instances, rate, rate * 3, 30, 1, shard_rate);
                let worst = *over.iter().min().unwrap();
                let most = *over.iter().max().unwrap();
                let worst_pair = over.windows(2).map(|p| p[0] + p[1]).max().unwrap();
                assert!(
                    worst as f64 >= 0.9 * f64::from(rate),
                    "{rate}, {instances}: {over:?}"
                );
                assert!(most <= burst(rate), "{rate}, {instances}: {over:?}");
                assert!(
                    worst_pair <= pair_limit(rate),
                    "{rate}, {instances}: {over:?}"
                );
            }
        }
    }

    #[test]
    fn a_batch_costing_more_than_a_shard_holds_is_admitted_from_several() {
        // 16 shards of about 7 tokens; batches of 10 at 90 % of the rate.
        let (rate, shard_rate) = (100, 1.0);
        assert_eq!(shard_count(rate, shard_rate), 16);
        let admitted = simulate_sharded(1, rate, 9, 30, 10, shard_rate);
        assert_eq!(admitted.iter().sum::<u64>(), 9 * 30 * 10, "{admitted:?}");
    }

    #[test]
    fn leases_go_round_the_shards_and_a_full_one_is_passed_over() {
        let store = Arc::new(MemoryCounters::default());
        let limiter = RateLimiter::with_shard_rate(Arc::clone(&store), 10.0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let now_ms = 1_800_000_000_000;
        // 40 a second over 4 shards of 11 a second: 44 admitted in one second, each
        // shard's part taken, then none.
        let admitted = (0..60)
            .filter(|_| {
                runtime
                    .block_on(limiter.check("ws", 40, 1, now_ms))
                    .unwrap()
                    == RateDecision::Allowed
            })
            .count();
        assert_eq!(admitted as u64, burst(40));
        for shard in 0..4 {
            let counter = store.counter(&counter_key("ws", shard)).unwrap();
            assert_eq!(counter.used, 11, "shard {shard}");
        }
    }
}
