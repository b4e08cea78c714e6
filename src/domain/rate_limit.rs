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
