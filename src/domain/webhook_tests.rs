use super::*;
use std::time::UNIX_EPOCH;

fn allowed(address: &str) -> bool {
    address_allowed(address.parse().expect("an address"), Reach::Public)
}

#[test]
fn every_refused_range_is_refused_at_both_its_edges_and_its_neighbours_are_not() {
    // (first, last) of each range, then the addresses just outside it.
    let refused = [
        ("0.0.0.0", "0.255.255.255"),
        ("10.0.0.0", "10.255.255.255"),
        ("100.64.0.0", "100.127.255.255"),
        ("127.0.0.0", "127.255.255.255"),
        ("169.254.0.0", "169.254.255.255"),
        ("172.16.0.0", "172.31.255.255"),
        ("192.0.0.0", "192.0.0.255"),
        ("192.0.2.0", "192.0.2.255"),
        ("192.168.0.0", "192.168.255.255"),
        ("198.18.0.0", "198.19.255.255"),
        ("198.51.100.0", "198.51.100.255"),
        ("203.0.113.0", "203.0.113.255"),
        ("224.0.0.0", "239.255.255.255"),
        ("240.0.0.0", "255.255.255.255"),
        ("::", "::"),
        ("::1", "::1"),
        ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("100::", "100::ffff:ffff:ffff:ffff"),
        ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("2001::", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff"),
    ];
    for (first, last) in refused {
        assert!(!allowed(first), "{first} is refused");
        assert!(!allowed(last), "{last} is refused");
    }
    let public = [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "93.184.215.14",
        "2606:4700:4700::1111",
        "2001:1::1",
        "fec0::1",
        "::2",
    ];
    for address in public {
        assert!(allowed(address), "{address} is public");
    }
}

#[test]
fn the_metadata_services_are_refused_however_they_are_written() {
    for address in [
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ] {
        assert!(!allowed(address), "{address} is refused");
    }
}

#[test]
fn an_ipv4_address_inside_an_ipv6_one_is_judged_as_itself() {
    assert!(allowed("::ffff:93.184.215.14"));
    assert!(!allowed("::ffff:10.0.0.1"));
    assert!(allowed("64:ff9b::5db8:d70e"));
    assert!(!allowed("64:ff9b::7f00:1"));
    assert!(allowed("2002:5db8:d70e::1"));
    assert!(!allowed("2002:c0a8:0101::1"));
}

#[test]
fn the_local_switch_allows_loopback_and_nothing_else_private() {
    let local = |address: &str| address_allowed(address.parse().unwrap(), Reach::PublicAndLoopback);
    assert!(local("127.0.0.1"));
    assert!(local("::1"));
    assert!(local("::ffff:127.0.0.1"));
    assert!(local("93.184.215.14"));
    for address in [
        "10.0.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fd00:ec2::254",
        "0.0.0.0",
    ] {
        assert!(!local(address), "{address} stays refused");
    }
}

const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const BODY: &str = r#"{"type":"audience.entered","sequence":1}"#;

#[test]
fn a_signature_is_the_one_the_specifications_python_library_makes() {
    // `Webhook(secret).sign("msg_2Kx", 2025-12-07T00:00:00Z, BODY)` with PyPI's
    // `standardwebhooks` 1.3.0, for each secret.
    assert_eq!(
        signature(&[SECRET], "msg_2Kx", 1_765_065_600, BODY).unwrap(),
        "v1,o0EuE9kz0omI6Zaw5NtpjT1fECdP1R3QYNVkH9tLQHQ="
    );
    assert_eq!(
        signature(&[SECRET, OTHER_SECRET], "msg_2Kx", 1_765_065_600, BODY).unwrap(),
        "v1,o0EuE9kz0omI6Zaw5NtpjT1fECdP1R3QYNVkH9tLQHQ= v1,vQwKoYFtaEWOpkKYtDcHjUtSf/bpDHbe62/g4IQQ7gI="
    );
}

#[test]
fn a_made_secret_is_whsec_and_its_bytes_and_signs() {
    let secret = secret_from(&std::array::from_fn(|i| i as u8));
    assert_eq!(secret, SECRET);
    assert_eq!(
        signature(&["whsec_!!"], "msg_1", 1, BODY),
        Err(InvalidSecret)
    );
    assert_eq!(message_id("0d3c"), "msg_0d3c");
}

#[test]
fn an_append_wakes_a_lane_whose_lease_lapsed_or_is_its_own_message_s() {
    assert!(append_wakes(0, None, 1_000, "msg_1"), "never leased");
    assert!(append_wakes(1_000, Some("msg_0"), 1_000, "msg_1"), "lapsed");
    assert!(!append_wakes(1_001, Some("msg_0"), 1_000, "msg_1"), "held");
    assert!(
        append_wakes(1_001, Some("msg_1"), 1_000, "msg_1"),
        "held by an earlier append of this message, whose wake may not have gone out"
    );
}

#[test]
fn the_waits_follow_the_schedule_within_the_jitter_then_the_message_is_given_up() {
    assert_eq!(next_wait(0, 1.0), None, "no wait before a first failure");
    assert_eq!(next_wait(1, 1.0), Some(Duration::from_secs(5)));
    assert_eq!(next_wait(2, 1.0), Some(Duration::from_secs(300)));
    assert_eq!(next_wait(7, 1.0), Some(Duration::from_secs(36_000)));
    assert_eq!(next_wait(8, 1.0), None, "the eighth failure gives up");
    assert_eq!(next_wait(1, 0.8), Some(Duration::from_secs(4)));
    assert_eq!(next_wait(1, 1.2), Some(Duration::from_secs(6)));
    assert_eq!(
        next_wait(1, 3.0),
        Some(Duration::from_secs(6)),
        "jitter is bounded"
    );
    assert_eq!(next_wait(1, -1.0), Some(Duration::from_secs(4)));
    let total: Duration = RETRY_WAITS.iter().sum();
    assert!(
        total < FAILING_DISABLES_AFTER,
        "a message is given up before its endpoint is disabled"
    );
}

#[test]
fn an_answer_is_delivered_retried_or_gone() {
    let now = UNIX_EPOCH + Duration::from_secs(1_765_065_600);
    assert_eq!(outcome(200, None, now), Outcome::Delivered);
    assert_eq!(outcome(204, Some("30"), now), Outcome::Delivered);
    assert_eq!(outcome(410, None, now), Outcome::Gone);
    for status in [301, 302, 400, 404, 408, 500, 502] {
        assert_eq!(
            outcome(status, Some("30"), now),
            Outcome::Retry { after: None },
            "{status}"
        );
    }
    let after = |value| match outcome(429, Some(value), now) {
        Outcome::Retry { after } => after,
        other => panic!("{other:?}"),
    };
    assert_eq!(after("30"), Some(Duration::from_secs(30)));
    assert_eq!(after(" 2 "), Some(Duration::from_secs(2)));
    assert_eq!(
        after("0"),
        Some(Duration::from_secs(1)),
        "at least a second"
    );
    assert_eq!(
        after("999999999"),
        Some(Duration::from_secs(86_400)),
        "at most a day"
    );
    assert_eq!(
        after("Sun, 07 Dec 2025 00:02:00 GMT"),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        after("Sat, 06 Dec 2025 00:00:00 GMT"),
        Some(Duration::from_secs(1)),
        "a date past"
    );
    assert_eq!(after("soon"), None);
    assert_eq!(after("-5"), None);
    assert_eq!(
        outcome(503, Some("7"), now),
        Outcome::Retry {
            after: Some(Duration::from_secs(7))
        }
    );
}

#[test]
fn a_410_disables_at_once_and_five_days_of_failures_disable_too() {
    let day = 24 * 3600 * 1000;
    let now = 1_800_000_000_000;
    let failed = Outcome::Retry { after: None };
    let change = |outcome, since| health_change(outcome, since, now, FAILING_DISABLES_AFTER);
    assert_eq!(
        change(Outcome::Gone, None),
        HealthChange::Disable(DisabledReason::Gone)
    );
    assert_eq!(
        change(Outcome::Gone, Some(now - day)),
        HealthChange::Disable(DisabledReason::Gone)
    );
    assert_eq!(change(Outcome::Delivered, None), HealthChange::Unchanged);
    assert_eq!(
        change(Outcome::Delivered, Some(now - 4 * day)),
        HealthChange::Recovered
    );
    assert_eq!(change(failed, None), HealthChange::StartedFailing(now));
    assert_eq!(
        change(failed, Some(now - 5 * day + 1)),
        HealthChange::Unchanged,
        "a millisecond short of five days"
    );
    assert_eq!(
        change(failed, Some(now - 5 * day)),
        HealthChange::Disable(DisabledReason::Failing)
    );
    assert_eq!(
        health_change(failed, Some(now - 2_000), now, Duration::from_secs(2)),
        HealthChange::Disable(DisabledReason::Failing),
        "a test's shorter allowance"
    );
    for reason in [DisabledReason::Gone, DisabledReason::Failing] {
        assert_eq!(DisabledReason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(DisabledReason::parse("tired"), None);
}

#[test]
fn a_log_place_sorts_as_its_time_and_only_a_made_one_is_one() {
    let early = log_place(999_999_999_999, "msg_b");
    let late = log_place(1_800_000_000_000, "msg_a");
    assert_eq!(late, "1800000000000#msg_a");
    assert!(early < late, "{early} < {late}");
    assert!(is_log_place(&early) && is_log_place(&late));
    let newest_first = |since_ms, after: Option<&String>| LogRange {
        since_ms,
        after: after.cloned(),
        ..LogRange::default()
    };
    let (from, to) = newest_first(999_999_999_999, None).places().unwrap();
    assert!(from <= early && early < to && late < to, "{from} {to}");
    assert!(
        from > log_place(999_999_999_998, "msg_z"),
        "older lines are left out"
    );
    assert_eq!(newest_first(0, Some(&late)).places().unwrap().1, late);
    assert_eq!(
        newest_first(1_800_000_000_001, Some(&late)).places(),
        None,
        "a cursor older than the endpoint"
    );
    let oldest_first = |after: Option<&String>| LogRange {
        since_ms: 999_999_999_999,
        until_ms: Some(1_800_000_000_000),
        after: after.cloned(),
        oldest_first: true,
    };
    let (from, to) = oldest_first(None).places().unwrap();
    assert!(from <= early && early < to, "{from} {to}");
    assert!(late > to, "a line of the until's millisecond is left out");
    assert_eq!(oldest_first(Some(&early)).places().unwrap().0, early);
    assert_eq!(
        oldest_first(Some(&late)).places(),
        None,
        "a cursor past until"
    );
    for not_one in [
        "",
        "#msg_a",
        "180000000000#msg_a",
        "18000000000x0#msg_a",
        "1800000000000#a",
        "1800000000000",
    ] {
        assert!(!is_log_place(not_one), "{not_one}");
    }
}
