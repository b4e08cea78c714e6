//! The rate limit's two bounds (contract, "Rate limit"): pure arithmetic that the
//! limiter, the DynamoDB counter's condition and the in-memory counter all apply.

/// The most one calendar second admits: the rate plus a tenth.
pub fn burst(rate: u32) -> u64 {
    u64::from(rate) + u64::from(rate / 10)
}

/// The most two consecutive seconds admit together.
pub fn pair_limit(rate: u32) -> u64 {
    2 * u64::from(rate)
}

/// Requests a second one shard of a workspace's counter hands out, on AWS: a partition
/// takes 1,000 write units a second, and a shard costs one per lease (a request, at
/// worst) and two per instance that opens its second, so 400 leaves room for hundreds
/// of instances (`docs/scale.md`, "rate-limit counter").
pub const DEFAULT_SHARD_RATE: f64 = 400.0;

/// The most shards one workspace's counter spreads over.
pub const MAX_SHARDS: u32 = 16;

/// What one counter (a workspace's, or one shard of it) may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// In one calendar second.
    pub second: u64,
    /// In two consecutive seconds together.
    pub pair: u64,
}

impl Bounds {
    /// A key's bounds at `rate` requests a second.
    pub fn of(rate: u32) -> Self {
        Self {
            second: burst(rate),
            pair: pair_limit(rate),
        }
    }

    /// The rate these bounds are of (a shard's part of it, for a part).
    pub fn rate(self) -> u64 {
        self.pair / 2
    }

    /// The most a second's count may reach by *quiet leases* (each a whole second of an
    /// instance's own traffic at once, not a tenth of it), given the count of the
    /// second before: a tenth of what that one left of the rate. So the tokens of quiet
    /// leases left unspent when a second ends are at most `(rate − previous) ÷ 10`, and
    /// those of ordinary leases (a tenth of what each instance served the second
    /// before) at most `previous ÷ 10`: together at most a tenth of the rate, as without
    /// quiet leases, and traffic up to ~0.9 × the rate is still never refused
    /// (`docs/api.md`). In integers: `10 × (count + tokens) + previous ≤ rate`. Over
    /// shards, each applies it to its part: a shard whose second before burst past its
    /// part (at most a tenth over) gives no quiet room while the others keep theirs, so
    /// the sum may pass the whole's by at most a hundredth of the rate.
    pub fn quiet_cap(self, previous: u64) -> u64 {
        self.rate().saturating_sub(previous) / 10
    }

    /// Shard `shard`'s part of these bounds over `shards`: the parts sum to them.
    pub fn part(self, shards: u32, shard: u32) -> Self {
        let split = |total: u64| {
            let shards = u64::from(shards);
            total / shards + u64::from(u64::from(shard) < total % shards)
        };
        Self {
            second: split(self.second),
            pair: split(self.pair),
        }
    }
}

/// The shards a key of `rate` spreads its counter over, each handing out about
/// `shard_rate` requests a second at most, and at least one.
pub fn shard_count(rate: u32, shard_rate: f64) -> u32 {
    let wanted = (f64::from(rate) / shard_rate).ceil();
    // `as` saturates (NaN to 0): any shard rate gives 1..=MAX_SHARDS.
    (wanted as u32).clamp(1, MAX_SHARDS.min(rate).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_leases_stop_at_a_tenth_of_what_the_second_before_left_of_the_rate() {
        let bounds = Bounds::of(1_000);
        assert_eq!(bounds.rate(), 1_000);
        assert_eq!(bounds.quiet_cap(0), 100);
        assert_eq!(bounds.quiet_cap(400), 60);
        assert_eq!(bounds.quiet_cap(995), 0);
        assert_eq!(bounds.quiet_cap(1_100), 0, "a burst before: none");
        assert_eq!(Bounds::of(9).quiet_cap(0), 0, "a rate under 10: none");
        let part = bounds.part(3, 0);
        assert_eq!(part.rate(), 333);
        assert_eq!(part.quiet_cap(13), 32);
    }

    #[test]
    fn shard_parts_sum_to_the_bounds_and_each_hands_out_something() {
        for rate in [1, 7, 100, 401, 3_000, 100_000] {
            for shard_rate in [0.4, 10.0, DEFAULT_SHARD_RATE] {
                let shards = shard_count(rate, shard_rate);
                assert!((1..=MAX_SHARDS).contains(&shards));
                let bounds = Bounds::of(rate);
                let parts: Vec<Bounds> = (0..shards).map(|s| bounds.part(shards, s)).collect();
                assert_eq!(parts.iter().map(|p| p.second).sum::<u64>(), bounds.second);
                assert_eq!(parts.iter().map(|p| p.pair).sum::<u64>(), bounds.pair);
                assert!(parts.iter().all(|p| p.second >= 1), "{rate} over {shards}");
            }
        }
        assert_eq!(shard_count(100, DEFAULT_SHARD_RATE), 1);
        assert_eq!(shard_count(3_000, DEFAULT_SHARD_RATE), 8);
        assert_eq!(shard_count(100, 0.4), MAX_SHARDS);
        assert_eq!(shard_count(5, 0.4), 5);
        assert_eq!(shard_count(5, f64::NAN), 1);
    }
}
