//! The rate limiter's shared counters: one item per workspace, or per shard of one
//! (`<workspace>#<shard>`, shards past the first).

use super::{
    condition, condition_held, get_by_key, get_n, n, s, Condition, Item, PARTITION_KEY,
    TTL_ATTRIBUTE,
};
use crate::app::ports::{Counter, Counters, PortError};
use crate::domain::rate_limit::Bounds;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

/// Before a counter's key: counters of this layout are items of their own, so an
/// instance of the previous layout (a lease, then a put to open a second) never
/// rewrites one during a deploy; its items expire a minute or two after.
const LAYOUT: &str = "c#";

fn item_key(key: &str) -> String {
    format!("{LAYOUT}{key}")
}

/// A counter outlives the window that reads it as "previous"; an expired one counts
/// as an idle workspace.
const COUNTER_TTL_SECS: i64 = 120;

/// A lease removes the counts of this many windows before its own: what a gap in a
/// shard's traffic left behind, up to that long.
const WINDOWS_CLEARED: i64 = 10;
/// Counts left from before a longer gap that an item may hold before a lease clears
/// them in a write of their own (they are read back with every lease, for free).
const LEFT_BEHIND_CLEARED: usize = 8;

/// A lease's update expression: the same for every second (only what its names stand
/// for moves), so it is written once, not on every lease.
static LEASE_UPDATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let cleared: Vec<String> = (1..=WINDOWS_CLEARED)
        .map(|back| format!("#c{back}, #s{back}, #q{back}"))
        .collect();
    format!(
        "SET #window = :window, #used = if_not_exists(#used, :zero) + :tokens, \
         #pair = if_not_exists(#pair, :zero) + :tokens, \
         #next = if_not_exists(#next, :zero) + :tokens, \
         #quiet = if_not_exists(#quiet, :zero) + :tens, \
         #quiet_next = if_not_exists(#quiet_next, :zero) + :tokens, \
         #expires = :expires REMOVE {}",
        cleared.join(", ")
    )
});

/// A lease's condition: a second in the past takes nothing; the second alone; the
/// second with the one before.
macro_rules! lease_checks {
    () => {
        "(attribute_not_exists(#window) OR #window <= :window) \
         AND (attribute_not_exists(#used) OR #used <= :max_used) \
         AND (attribute_not_exists(#pair) OR #pair <= :max_pair)"
    };
}
const LEASE_CHECKS: &str = lease_checks!();
/// A quiet lease's, with its cap. A second leased only by instances from before `q<w>`
/// has a pair but no quiet count: no quiet lease then. One that instances from before
/// leased too (during a deploy) undercounts by their part of the second before, so
/// quiet leases may then leave up to a tenth of the rate more unspent: until the deploy
/// ends, traffic near 0.9 × the rate may meet a 429; the two bounds hold throughout.
const QUIET_LEASE_CHECKS: &str = concat!(
    lease_checks!(),
    " AND ((attribute_not_exists(#quiet) AND attribute_not_exists(#pair)) \
     OR #quiet <= :max_quiet)"
);

/// One counter per workspace or shard (`pk` = its key): `window` (the latest epoch
/// second leased from), and per second `w`, `c<w>` (tokens handed out in it), `s<w>`
/// (with the second before's: a lease adds to its second's pair and to the next's, so
/// that one condition checks the two-second bound) and `q<w>` (ten times `c<w>` plus
/// the second before's count, so that one condition checks a quiet lease's cap,
/// `Bounds::quiet_cap`: `q<w> + 10 × tokens ≤ rate`). A lease is one conditional update,
/// whether or not it opens its second: a second's counts start from what is absent
/// (`if_not_exists`), so no instance needs to know where the counter stands, and a
/// second the counter has moved past takes nothing.
#[derive(Clone)]
pub struct RateLimitStore {
    client: Client,
    table: String,
}

impl RateLimitStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A counter as stored (consistent read): a workspace's is its id.
    pub async fn counter(&self, key: &str) -> Result<Option<Counter>, PortError> {
        let item = get_by_key(&self.client, &self.table, item_key(key), true).await?;
        Ok(item.as_ref().and_then(counter_from_item))
    }

    /// Removes counts a gap left behind, once there are enough of them to matter.
    async fn clear_left_behind(
        &self,
        key: String,
        item: &Item,
        window: i64,
    ) -> Result<(), PortError> {
        let left: Vec<&String> = item
            .keys()
            .filter(|name| second_of(name).is_some_and(|w| w < window - WINDOWS_CLEARED))
            .collect();
        if left.len() < LEFT_BEHIND_CLEARED {
            return Ok(());
        }
        let names: Vec<String> = (0..left.len()).map(|i| format!("#l{i}")).collect();
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(key))
            .update_expression(format!("REMOVE {}", names.join(", ")))
            // Not on an item expired since: an update would make a new one of the key.
            .condition_expression("attribute_exists(#window)")
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .zip(left.into_iter().cloned())
                    .chain([("#window".to_owned(), "window".to_owned())])
                    .collect(),
            ));
        condition_held(request.send().await)?;
        Ok(())
    }
}

impl Counters for RateLimitStore {
    async fn take(
        &self,
        key: &str,
        window: i64,
        tokens: u64,
        bounds: Bounds,
        quiet: bool,
    ) -> Result<Result<Counter, Option<Counter>>, PortError> {
        let max_used = bounds.second.checked_sub(tokens);
        let max_pair = bounds.pair.checked_sub(tokens);
        let tens = tokens.saturating_mul(10);
        let max_quiet = if quiet {
            bounds.rate().checked_sub(tens)
        } else {
            Some(u64::MAX)
        };
        let (Some(max_used), Some(max_pair), Some(max_quiet)) = (max_used, max_pair, max_quiet)
        else {
            return Ok(Err(self.counter(key).await?));
        };
        let count = |w: i64| format!("c{w}");
        let pair = |w: i64| format!("s{w}");
        let quiet_count = |w: i64| format!("q{w}");
        let checks = if quiet {
            QUIET_LEASE_CHECKS
        } else {
            LEASE_CHECKS
        };
        let key = item_key(key);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(&key))
            .update_expression(LEASE_UPDATE.as_str())
            .condition_expression(checks)
            .expression_attribute_names("#window", "window")
            .expression_attribute_names("#used", count(window))
            .expression_attribute_names("#pair", pair(window))
            // A second's tokens count towards the next one's pair as they are leased.
            .expression_attribute_names("#next", pair(window + 1))
            .expression_attribute_names("#quiet", quiet_count(window))
            .expression_attribute_names("#quiet_next", quiet_count(window + 1))
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(":window", n(window))
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":tens", n(tens))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":max_used", n(max_used))
            .expression_attribute_values(":max_pair", n(max_pair))
            .expression_attribute_values(":expires", n(window + COUNTER_TTL_SECS))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for back in 1..=WINDOWS_CLEARED {
            request = request
                .expression_attribute_names(format!("#c{back}"), count(window - back))
                .expression_attribute_names(format!("#s{back}"), pair(window - back))
                .expression_attribute_names(format!("#q{back}"), quiet_count(window - back));
        }
        if quiet {
            request = request.expression_attribute_values(":max_quiet", n(max_quiet));
        }
        // Read as full if the counter left were not returned (DynamoDB always returns
        // it, as asked): no quiet lease then follows.
        let full = Counter {
            window,
            used: bounds.second,
            previous: bounds.pair,
        };
        let out = match request.send().await {
            Ok(out) => out,
            Err(err) => {
                return Ok(match condition::<(), _>(Err(err))? {
                    Condition::Held => Ok(full),
                    Condition::Failed(found) => Err(found.as_ref().and_then(counter_from_item)),
                })
            }
        };
        let Some(item) = out.attributes() else {
            return Ok(Ok(full));
        };
        self.clear_left_behind(key, item, window).await?;
        Ok(Ok(counter_from_item(item).unwrap_or(full)))
    }
}

/// The second a count, pair or quiet attribute (`c<w>`, `s<w>`, `q<w>`) is of.
fn second_of(name: &str) -> Option<i64> {
    name.strip_prefix(['c', 's', 'q'])?.parse().ok()
}

fn counter_from_item(item: &Item) -> Option<Counter> {
    let window: i64 = get_n(item, "window")?;
    let used: u64 = get_n(item, &format!("c{window}")).unwrap_or(0);
    let pair: u64 = get_n(item, &format!("s{window}")).unwrap_or(used);
    Some(Counter {
        window,
        used,
        previous: pair.saturating_sub(used),
    })
}
