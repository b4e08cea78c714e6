//! DynamoDB's limits hold locally: the proxy `dev/stack.py` puts between the functions
//! and moto refuses, with DynamoDB's ValidationException, the calls DynamoDB refuses
//! and moto would take (see dev/dynamodb_limits.py). Each test makes a real SDK call
//! past one limit and one just inside it, on the users table (partition key `pk`).

use crate::support::Stack;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

/// The service error code a failed call answered with (None for a transport error).
fn service_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<String> {
    error
        .as_service_error()
        .and_then(|e| e.code())
        .map(str::to_owned)
}

/// Asserts that DynamoDB's ValidationException refused the call.
fn assert_refused<T, E: ProvideErrorMetadata, R>(result: Result<T, SdkError<E, R>>, what: &str) {
    match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(error) => assert_eq!(
            service_code(&error).as_deref(),
            Some("ValidationException"),
            "{what}"
        ),
    }
}

/// A partition key of this test's workspace exactly `bytes` long.
fn pk_of(stack: &Stack, bytes: usize) -> String {
    let prefix = format!("{}#limits-", stack.workspace);
    format!("{prefix}{}", "k".repeat(bytes - prefix.len()))
}

/// An item of this test's workspace with `attributes` besides its partition key.
fn item(stack: &Stack, suffix: &str, attributes: Vec<(&str, AttributeValue)>) -> Item {
    let pk = format!("{}#limits-{suffix}", stack.workspace);
    let mut item: Item = attributes
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    item.insert("pk".into(), AttributeValue::S(pk));
    item
}

/// An item whose attribute `n` is the number `value`.
fn with_number(stack: &Stack, suffix: &str, value: &str) -> Item {
    item(stack, suffix, vec![("n", AttributeValue::N(value.into()))])
}

/// An item of exactly `bytes` by DynamoDB's size rule: name plus UTF-8 value for each
/// of its two string attributes, `pk` and `blob`.
fn item_of_size(stack: &Stack, suffix: &str, bytes: usize) -> Item {
    let mut item = item(stack, suffix, vec![]);
    let pk_bytes = "pk".len() + item["pk"].as_s().unwrap().len();
    let blob = "x".repeat(bytes - pk_bytes - "blob".len());
    item.insert("blob".into(), AttributeValue::S(blob));
    item
}

/// Puts an item into the users table.
async fn put(stack: &Stack, item: Item) -> Result<(), SdkError<PutItemError>> {
    stack
        .dynamodb
        .put_item()
        .table_name(&stack.resources.users_table)
        .set_item(Some(item))
        .send()
        .await
        .map(|_| ())
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn put_item_with_a_partition_key_over_2048_bytes_is_refused() {
    let stack = Stack::new().await;
    let key = |bytes| Item::from([("pk".to_owned(), AttributeValue::S(pk_of(&stack, bytes)))]);
    assert_refused(put(&stack, key(2049)).await, "a 2,049-byte pk");
    // moto itself refuses stored keys over 1,024 bytes (it counts a partition key as a
    // range key), so the largest key it stores is the positive case.
    put(&stack, key(1024)).await.expect("a 1,024-byte pk");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn get_item_with_a_key_over_2048_bytes_is_refused() {
    let stack = Stack::new().await;
    let get = |bytes| {
        stack
            .dynamodb
            .get_item()
            .table_name(&stack.resources.users_table)
            .key("pk", AttributeValue::S(pk_of(&stack, bytes)))
            .send()
    };
    assert_refused(get(2049).await, "a 2,049-byte key");
    let found = get(2048).await.expect("a 2,048-byte key");
    assert!(found.item().is_none());
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_empty_map_key_nested_in_traits_is_refused() {
    let stack = Stack::new().await;
    let traits = |key: &str| {
        let plan = AttributeValue::M(HashMap::from([(
            key.to_owned(),
            AttributeValue::S("pro".into()),
        )]));
        AttributeValue::M(HashMap::from([("plan".to_owned(), plan)]))
    };
    let refused = item(&stack, "empty", vec![("traits", traits(""))]);
    assert_refused(put(&stack, refused).await, "an empty map key");
    let accepted = item(&stack, "named", vec![("traits", traits("tier"))]);
    put(&stack, accepted).await.expect("a named map key");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_number_of_39_significant_digits_is_refused() {
    let stack = Stack::new().await;
    let refused = with_number(&stack, "39", &"9".repeat(39));
    assert_refused(put(&stack, refused).await, "39 digits");
    let accepted = with_number(&stack, "38", &format!("{}000", "9".repeat(38)));
    put(&stack, accepted).await.expect("38 significant digits");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_number_of_1e126_is_refused() {
    let stack = Stack::new().await;
    assert_refused(
        put(&stack, with_number(&stack, "big", "1E+126")).await,
        "1E+126",
    );
    let largest = with_number(
        &stack,
        "largest",
        "9.9999999999999999999999999999999999999E+125",
    );
    put(&stack, largest).await.expect("9.99…E+125");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn a_number_of_1e_minus_131_is_refused() {
    let stack = Stack::new().await;
    assert_refused(
        put(&stack, with_number(&stack, "tiny", "1E-131")).await,
        "1E-131",
    );
    let smallest = with_number(&stack, "smallest", "1E-130");
    put(&stack, smallest).await.expect("1E-130");
}

#[tokio::test]
#[ignore = "needs the local stack: run `make test`"]
async fn an_item_over_400_kb_is_refused() {
    let stack = Stack::new().await;
    let over = item_of_size(&stack, "over", 409_601);
    assert_refused(put(&stack, over).await, "a 409,601-byte item");
    // moto itself refuses items over 405,000 bytes (its own count, the same as
    // DynamoDB's for string attributes), so just under is 405,000 here, not 409,600.
    let under = item_of_size(&stack, "under", 405_000);
    put(&stack, under).await.expect("a 405,000-byte item");
}
