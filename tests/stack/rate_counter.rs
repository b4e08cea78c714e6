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
    // The first lease of a counter opens it; the second's bound holds.
    assert_eq!(store.take(&key, w, 8, BOUNDS).await.unwrap(), Ok(()));
    assert_eq!(store.take(&key, w, 3, BOUNDS).await.unwrap(), Ok(()));
    let full = Counter {
        window: w,
        used: 11,
        previous: 0,
    };
    assert_eq!(
        store.take(&key, w, 1, BOUNDS).await.unwrap(),
        Err(Some(full))
    );
    // The next second opens from this one: 11 + 9 = 20, the pair's bound.
    assert_eq!(
        store.take(&key, w + 1, 10, BOUNDS).await.unwrap(),
        Err(Some(full))
    );
    assert_eq!(store.take(&key, w + 1, 9, BOUNDS).await.unwrap(), Ok(()));
    let next = Counter {
        window: w + 1,
        used: 9,
        previous: 11,
    };
    assert_eq!(store.counter(&key).await.unwrap(), Some(next));
    assert_eq!(
        store.take(&key, w + 1, 1, BOUNDS).await.unwrap(),
        Err(Some(next))
    );
    // A clock behind: a second the counter has moved past takes nothing.
    assert_eq!(
        store.take(&key, w, 1, BOUNDS).await.unwrap(),
        Err(Some(next))
    );
    // Two seconds on, nothing of the earlier ones counts.
    assert_eq!(store.take(&key, w + 3, 11, BOUNDS).await.unwrap(), Ok(()));
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
        assert_eq!(
            store.take(&key, w + 30 * i, 1, BOUNDS).await.unwrap(),
            Ok(())
        );
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
    // Key, window, expiry, this second's two counts, and fewer than the 8 counts left
    // behind that a lease clears (left alone, the item would hold 63 by now).
    assert!(largest <= 5 + 7, "{largest} attributes");
    assert_eq!(
        store.counter(&key).await.unwrap(),
        Some(Counter {
            window: w + 30 * 29,
            used: 1,
            previous: 0
        })
    );
}
