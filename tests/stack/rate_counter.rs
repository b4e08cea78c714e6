//! The rate limiter's shared counter against the emulator: one conditional update a
//! lease, opening its second or not; both bounds; a second the counter moved past;
//! what a gap in traffic leaves behind, cleared.

use crate::support::Stack;
use vibefollow_users::app::ports::{Counter, Counters};
use vibefollow_users::aws_sdk_dynamodb::types::AttributeValue;
use vibefollow_users::domain::rate_limit::Bounds;

const BOUNDS: Bounds = Bounds {
    second: 11,
    pair: 20,
};

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_lease_opens_its_second_in_the_same_write_and_keeps_both_bounds() {
    let stack = Stack::new().await;
    let store = stack.rate_limits();
    let key = format!("{}#counter", stack.workspace);
    let w = 1_800_000_000;
    // The first lease of a counter opens it; the second's bound holds. Each lease
    // returns the counter as it left it.
    let after = |window, used, previous| {
        Ok(Counter {
            window,
            used,
            previous,
        })
    };
    assert_eq!(
        store.take(&key, w, 8, BOUNDS, false).await.unwrap(),
        after(w, 8, 0)
    );
    assert_eq!(
        store.take(&key, w, 3, BOUNDS, false).await.unwrap(),
        after(w, 11, 0)
    );
    let full = Counter {
        window: w,
        used: 11,
        previous: 0,
    };
    assert_eq!(
        store.take(&key, w, 1, BOUNDS, false).await.unwrap(),
        Err(Some(full))
    );
    // The next second opens from this one: 11 + 9 = 20, the pair's bound.
    assert_eq!(
        store.take(&key, w + 1, 10, BOUNDS, false).await.unwrap(),
        Err(Some(full))
    );
    assert_eq!(
        store.take(&key, w + 1, 9, BOUNDS, false).await.unwrap(),
        after(w + 1, 9, 11)
    );
    let next = Counter {
        window: w + 1,
        used: 9,
        previous: 11,
    };
    assert_eq!(store.counter(&key).await.unwrap(), Some(next));
    assert_eq!(
        store.take(&key, w + 1, 1, BOUNDS, false).await.unwrap(),
        Err(Some(next))
    );
    // A clock behind: a second the counter has moved past takes nothing.
    assert_eq!(
        store.take(&key, w, 1, BOUNDS, false).await.unwrap(),
        Err(Some(next))
    );
    // Two seconds on, nothing of the earlier ones counts.
    assert_eq!(
        store.take(&key, w + 3, 11, BOUNDS, false).await.unwrap(),
        after(w + 3, 11, 0)
    );
    assert_eq!(
        store.counter(&key).await.unwrap(),
        Some(Counter {
            window: w + 3,
            used: 11,
            previous: 0
        })
    );
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn counts_a_gap_leaves_behind_are_cleared_and_the_item_stays_small() {
    let stack = Stack::new().await;
    let store = stack.rate_limits();
    let key = format!("{}#gaps", stack.workspace);
    let w = 1_800_000_000;
    let mut largest = 0;
    // A lease every 30 s: each leaves its second's counts behind.
    for i in 0..30 {
        assert!(store
            .take(&key, w + 30 * i, 1, BOUNDS, false)
            .await
            .unwrap()
            .is_ok());
        let item = stack
            .dynamodb
            .get_item()
            .table_name(&stack.resources.rate_limits_table)
            .key("pk", AttributeValue::S(format!("c#{key}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("the counter's item");
        largest = largest.max(item.len());
    }
    // Key, window, expiry, this second's three counts and the next one's two, and
    // fewer than the 8 counts left behind that a lease clears (left alone, the item
    // would hold 153 by now).
    assert!(largest <= 8 + 7, "{largest} attributes");
    assert_eq!(
        store.counter(&key).await.unwrap(),
        Some(Counter {
            window: w + 30 * 29,
            used: 1,
            previous: 0
        })
    );
}

/// A quiet lease (a second of an instance's own traffic at once) is granted only up to
/// a tenth of what the second before left of the rate, in the same one write; an
/// ordinary lease keeps the usual bounds beside it.
#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_quiet_lease_keeps_to_a_tenth_of_what_the_second_before_left_of_the_rate() {
    let stack = Stack::new().await;
    let store = stack.rate_limits();
    let key = format!("{}#quiet", stack.workspace);
    let bounds = Bounds::of(1_000);
    let w = 1_800_000_000;
    let take = |key: String, window: i64, tokens: u64, quiet: bool| {
        let store = store.clone();
        async move {
            store
                .take(&key, window, tokens, bounds, quiet)
                .await
                .unwrap()
        }
    };
    // A counter's first second: a tenth of the rate.
    assert!(take(key.clone(), w, 101, true).await.is_err());
    assert!(take(key.clone(), w, 100, true).await.is_ok());
    assert!(take(key.clone(), w, 300, false).await.is_ok());
    // The next: (1,000 − 400) ÷ 10 = 60 for quiet leases, ordinary ones beyond.
    assert!(take(key.clone(), w + 1, 50, true).await.is_ok());
    let at_50 = Counter {
        window: w + 1,
        used: 50,
        previous: 400,
    };
    assert_eq!(take(key.clone(), w + 1, 11, true).await, Err(Some(at_50)));
    assert!(take(key.clone(), w + 1, 10, true).await.is_ok());
    assert!(take(key.clone(), w + 1, 1, true).await.is_err());
    assert_eq!(
        take(key.clone(), w + 1, 100, false).await,
        Ok(Counter {
            window: w + 1,
            used: 160,
            previous: 400
        })
    );

    // A second leased by an instance from before quiet counts (its pair, no quiet
    // count): no quiet lease, an ordinary one as ever.
    let before = format!("{}#before-quiet", stack.workspace);
    let counts = [("c", w, 5), ("s", w, 5), ("s", w + 1, 5)];
    let mut item: std::collections::HashMap<String, AttributeValue> = counts
        .iter()
        .map(|(name, second, count)| (format!("{name}{second}"), n(*count)))
        .collect();
    item.insert("pk".into(), AttributeValue::S(format!("c#{before}")));
    item.insert("window".into(), n(w));
    stack
        .dynamodb
        .put_item()
        .table_name(&stack.resources.rate_limits_table)
        .set_item(Some(item))
        .send()
        .await
        .expect("a counter as an instance from before wrote it");
    assert!(take(before.clone(), w + 1, 1, true).await.is_err());
    assert!(take(before, w + 1, 1, false).await.is_ok());
}

fn n(number: i64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}
