//! Webhooks' pure rules (`docs/webhooks.md`): the addresses a delivery may connect to,
//! the Standard Webhooks signature, the retry schedule and what an endpoint's answer
//! means for the next attempt.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

/// What an endpoint subscribes to, as the wire spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    UserChanged,
    UserDeleted,
    AudienceEntered,
    AudienceExited,
    WebhookDisabled,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::UserChanged,
        EventType::UserDeleted,
        EventType::AudienceEntered,
        EventType::AudienceExited,
        EventType::WebhookDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserChanged => "user.changed",
            EventType::UserDeleted => "user.deleted",
            EventType::AudienceEntered => "audience.entered",
            EventType::AudienceExited => "audience.exited",
            EventType::WebhookDisabled => "webhook.disabled",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
    }
}

/// Where deliveries may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Public unicast addresses only: what AWS runs.
    Public,
    /// Loopback too, for a listener on the developer's machine (`WEBHOOK_ALLOW_LOCAL`,
    /// on in `make dev`, never in the template). Private ranges stay refused.
    PublicAndLoopback,
}

/// IPv4 ranges no delivery connects to: "this network", private, shared (CGNAT),
/// loopback, link-local (the instance metadata service at 169.254.169.254, ECS's at
/// 169.254.170.2), IETF protocol assignments, documentation, benchmarking, multicast,
/// reserved and broadcast.
const REFUSED_V4: [Ipv4Net; 14] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved, with the limited broadcast address at its end.
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges no delivery connects to: unspecified, loopback, link-local, unique-local
/// (EC2's IPv6 metadata service is fd00:ec2::254), multicast, discard-only,
/// documentation and TEREDO.
const REFUSED_V6: [Ipv6Net; 8] = [
    Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
    Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    Ipv6Net::new_assert(Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
];

/// IPv6 forms that carry an IPv4 address, judged by that address: IPv4-mapped, NAT64
/// (64:ff9b::/96) and 6to4 (2002::/16, the address in bits 16–48).
const NAT64: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
const SIX_TO_FOUR: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

/// Whether a delivery may connect to `address`: checked on the address actually
/// connected to, after DNS, on every attempt.
pub fn address_allowed(address: IpAddr, reach: Reach) -> bool {
    if reach == Reach::PublicAndLoopback && address.to_canonical().is_loopback() {
        return true;
    }
    match address {
        IpAddr::V4(v4) => v4_allowed(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_allowed(v4),
            None => !REFUSED_V6.iter().any(|net| net.contains(&v6)),
        },
    }
}

fn v4_allowed(address: Ipv4Addr) -> bool {
    !REFUSED_V4.iter().any(|net| net.contains(&address))
}

fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    let bits = address.to_bits();
    if NAT64.contains(&address) {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    if SIX_TO_FOUR.contains(&address) {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

/// A workspace subscribes at most this many endpoints.
pub const MAX_WEBHOOKS: usize = 20;

/// What [`is_webhook_id`] takes, as a refusal says it.
pub const WEBHOOK_ID_RULE: &str = "a webhook id is 1 to 64 of A-Z, a-z, 0-9, _ and -";

/// A webhook id: the same rule as an audience id's (1–64 of `[A-Za-z0-9_-]`).
pub fn is_webhook_id(id: &str) -> bool {
    crate::domain::audience::is_audience_id(id)
}

/// An endpoint's attempt log keeps each line this long.
pub const LOG_KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A line's place in an attempt log: when it started (ms, 13 digits, so places sort as
/// times do) and its message's `webhook-id`.
pub fn log_place(at_ms: i64, message_id: &str) -> String {
    format!("{at_ms:013}#{message_id}")
}

/// What became of a delivery at an attempt, as the attempt log shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Delivered,
    /// Failed; attempted again at `next_attempt_at`.
    Retrying,
    /// The schedule's last attempt failed, the endpoint answered 410, or it was
    /// disabled.
    GivenUp,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::GivenUp => "given_up",
        }
    }

    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        [Self::Delivered, Self::Retrying, Self::GivenUp]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// Which lines of an attempt log a page reads: those that started in
/// `[since_ms, until_ms)` (to the newest without `until_ms`), past `after` (the last
/// line of the page before), newest or oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRange {
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub after: Option<String>,
    pub oldest_first: bool,
}

impl LogRange {
    /// The places the page reads, inclusive (the line `after` names is among them: the
    /// caller drops it); `None` when nothing can be in between (a cursor older than
    /// `since_ms`: the page of an endpoint deleted since, whose id a new one took).
    pub fn places(&self) -> Option<(String, String)> {
        // A place of a time alone sorts before every line of that millisecond.
        let time = |ms: i64| format!("{:013}#", ms.max(0));
        let mut from = time(self.since_ms);
        // `~` sorts after every character of a webhook-id.
        let mut to = self
            .until_ms
            .map_or_else(|| log_place(9_999_999_999_999, "~"), time);
        match &self.after {
            Some(after) if self.oldest_first => from = from.max(after.clone()),
            Some(after) => to = to.min(after.clone()),
            None => {}
        }
        (from <= to).then_some((from, to))
    }
}

/// Whether `place` is one [`log_place`] makes.
pub fn is_log_place(place: &str) -> bool {
    place.split_once('#').is_some_and(|(at, id)| {
        at.len() == 13 && at.bytes().all(|b| b.is_ascii_digit()) && id.starts_with("msg_")
    })
}

/// After a rotation the previous secret signs this long too: receivers move to the new
/// one meanwhile.
pub const PREVIOUS_SECRET_SIGNS_FOR: Duration = Duration::from_secs(24 * 3600);

/// A secret is `whsec_` and the base64 of this many random bytes (the specification
/// asks for at least 24).
pub const SECRET_BYTES: usize = 32;
const SECRET_PREFIX: &str = "whsec_";

/// A signing secret from `SECRET_BYTES` random bytes (the caller's generator: the OS's).
pub fn secret_from(random: &[u8; SECRET_BYTES]) -> String {
    use base64::Engine;
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(random)
    )
}

/// A signing secret as stored (`whsec_…`): shown to its owner on creation and rotation
/// only, so never in a debug print (nor, through one, a log line or a test's message).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// A secret that does not decode: only ever one this service did not make.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a webhook secret is not whsec_ and base64")]
pub struct InvalidSecret;

/// `webhook-signature` for one attempt: `v1,<base64 HMAC-SHA256>` per secret, separated
/// by spaces (during a rotation the new and the previous secret both sign), over
/// `{webhook-id}.{webhook-timestamp}.{body}` as the specification's libraries verify it.
pub fn signature(
    secrets: &[&str],
    message_id: &str,
    timestamp_s: i64,
    body: &str,
) -> Result<String, InvalidSecret> {
    let signed = secrets
        .iter()
        .map(|secret| {
            standardwebhooks::Webhook::new(secret)
                .and_then(|key| key.sign(message_id, timestamp_s, body.as_bytes()))
                .map_err(|_| InvalidSecret)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signed.join(" "))
}

/// The `webhook-id` of an event: the same on every attempt and every endpoint, so a
/// receiver drops a repeat by it.
pub fn message_id(event_id: &str) -> String {
    format!("msg_{event_id}")
}

/// Whether an append of `message_id` wakes its lane's worker, taking the lane's lease
/// for it (`docs/webhooks.md` §2): none holds the lane (its lease lapsed by `now`), or
/// the lease is this message's own, taken by an earlier append of it whose wake may
/// never have gone out (the wake refused, the invocation killed, the append's answer
/// lost): its message came again while that lease still held, and waking nobody would
/// leave the lane with work and no worker until the next append after the lease.
pub fn append_wakes(lease_until: i64, leased_by: Option<&str>, now: i64, message_id: &str) -> bool {
    lease_until <= now || leased_by == Some(message_id)
}

/// The waits after each failed attempt (the specification's schedule): the first after
/// the first failure. The attempt after the last wait is the last one.
pub const RETRY_WAITS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Each wait is stretched by a factor drawn from this range, so that endpoints failing
/// together are not retried together.
pub const JITTER: (f64, f64) = (0.8, 1.2);

/// The wait before the next attempt after `failed` failed attempts (1 after the first),
/// `jitter` drawn from `JITTER` by the caller; `None`: give the message up.
pub fn next_wait(failed: usize, jitter: f64) -> Option<Duration> {
    let wait = RETRY_WAITS.get(failed.checked_sub(1)?)?;
    Some(wait.mul_f64(jitter.clamp(JITTER.0, JITTER.1)))
}

/// Failing this long with no 2xx disables an endpoint.
pub const FAILING_DISABLES_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
/// A delivery waits at most 15 s for its answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// An endpoint's `Retry-After` is honoured within these bounds.
pub const RETRY_AFTER_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// What an attempt's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: delivered.
    Delivered,
    /// Anything else: attempt again, after the endpoint's own `Retry-After` (429 and 503)
    /// when it gave one, else at the schedule's next step.
    Retry { after: Option<Duration> },
    /// 410 Gone: the endpoint is disabled at once.
    Gone,
}

/// Why an endpoint was disabled, as the api and `webhook.disabled` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledReason {
    /// It answered 410 Gone.
    Gone,
    /// No 2xx for [`FAILING_DISABLES_AFTER`].
    Failing,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Gone => "gone",
            DisabledReason::Failing => "failing",
        }
    }

    pub fn parse(name: &str) -> Option<DisabledReason> {
        [DisabledReason::Gone, DisabledReason::Failing]
            .into_iter()
            .find(|reason| reason.as_str() == name)
    }
}

/// What an attempt's outcome changes in its endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing to write: still healthy, or still failing within the allowance.
    Unchanged,
    /// A 2xx after failures: the failing streak ends.
    Recovered,
    /// The first failure after a 2xx: the streak starts at this time (ms).
    StartedFailing(i64),
    Disable(DisabledReason),
}

/// The change an attempt's `outcome` at `now` (ms) makes to an endpoint failing since
/// `failing_since` (none: healthy); `allowance` is [`FAILING_DISABLES_AFTER`], shorter
/// under a test's time factor.
pub fn health_change(
    outcome: Outcome,
    failing_since: Option<i64>,
    now: i64,
    allowance: Duration,
) -> HealthChange {
    let allowance = i64::try_from(allowance.as_millis()).unwrap_or(i64::MAX);
    match (outcome, failing_since) {
        (Outcome::Gone, _) => HealthChange::Disable(DisabledReason::Gone),
        (Outcome::Delivered, None) => HealthChange::Unchanged,
        (Outcome::Delivered, Some(_)) => HealthChange::Recovered,
        (Outcome::Retry { .. }, None) => HealthChange::StartedFailing(now),
        (Outcome::Retry { .. }, Some(since)) if now.saturating_sub(since) >= allowance => {
            HealthChange::Disable(DisabledReason::Failing)
        }
        (Outcome::Retry { .. }, Some(_)) => HealthChange::Unchanged,
    }
}

/// The outcome of an answer with `status` (a 3xx is a failure: redirects are never
/// followed) and the `Retry-After` header's value, as of `now`.
pub fn outcome(status: u16, retry_after: Option<&str>, now: SystemTime) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 503 => Outcome::Retry {
            after: retry_after.and_then(|value| retry_after_wait(value, now)),
        },
        _ => Outcome::Retry { after: None },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, clamped to `RETRY_AFTER_BOUNDS`;
/// `None` for anything else.
fn retry_after_wait(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.clamp(RETRY_AFTER_BOUNDS.0, RETRY_AFTER_BOUNDS.1))
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
