//! What the adapters share: SDK configuration and the one error type AWS failures are
//! reduced to before they reach the HTTP layer or the consumer.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// An AWS call that did not do its job. `Unavailable` is worth retrying (throttled,
/// unreachable, 5xx); `Internal` is a bug on our side (a malformed request).
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("AWS unavailable: {0}")]
    Unavailable(String),
    #[error("AWS call failed: {0}")]
    Internal(String),
}

const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "AWS.SimpleQueueService.RequestThrottled",
    "RequestThrottled",
    "KMS.ThrottlingException",
];

impl<E, R> From<SdkError<E, R>> for AwsError
where
    E: ProvideErrorMetadata + Debug,
    R: Debug,
{
    fn from(err: SdkError<E, R>) -> Self {
        match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => AwsError::Unavailable(format!("{err:?}")),
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown");
                let server_side = RETRYABLE_CODES.contains(&code);
                let detail = redact(&format!(
                    "{code}: {}",
                    service.err().message().unwrap_or("")
                ));
                if server_side {
                    AwsError::Unavailable(detail)
                } else {
                    AwsError::Internal(detail)
                }
            }
            _ => AwsError::Internal(redact(&format!("{err:?}"))),
        }
    }
}

/// Init waits this long at most for the connections it opens (Lambda allows init 10 s;
/// the SDK alone would retry an unreachable endpoint for longer).
const OPEN_CONNECTIONS_WITHIN: Duration = Duration::from_secs(2);

/// Runs the calls that open a function's connections during init. One that fails or
/// takes too long is opened later by the first request that needs it: worth a log
/// line, not a failed init.
pub async fn open_connections<const N: usize>(
    opening: impl Future<Output = [Result<(), AwsError>; N]>,
) {
    match tokio::time::timeout(OPEN_CONNECTIONS_WITHIN, opening).await {
        Ok(results) => {
            for error in results.into_iter().filter_map(Result::err) {
                tracing::warn!(error = %error, "connection not opened at init");
            }
        }
        Err(_) => tracing::warn!("connections not opened at init: timed out"),
    }
}

/// Indices of items, in order, grouped for batch calls that take at most `max_items`
/// items and `max_bytes` bytes each (an item over `max_bytes` goes alone).
pub fn call_groups(
    sizes: impl IntoIterator<Item = usize>,
    max_items: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (index, size) in sizes.into_iter().enumerate() {
        let full = groups
            .last()
            .is_none_or(|group| group.len() == max_items || bytes + size > max_bytes);
        if full {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(group) = groups.last_mut() {
            group.push(index);
        }
    }
    groups
}

/// AWS error details go to the log only; an AWS message can quote an attribute value,
/// so anything shaped like an email address or an API key is masked first.
fn redact(detail: &str) -> String {
    detail
        .split_inclusive(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')' | '[' | ']' | '{' | '}')
        })
        .map(|token| {
            let word = token.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_');
            if word.contains('@') || word.starts_with("sk_live_") || word.starts_with("sk_test_") {
                token.replacen(word, "[redacted]", 1)
            } else {
                token.to_owned()
            }
        })
        .collect()
}

/// The shared SDK configuration: region, credentials and (locally) `AWS_ENDPOINT_URL`
/// from the environment. Loading does no network I/O; credentials resolve on first use.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await
}

#[cfg(test)]
mod tests {
    use super::{call_groups, redact};

    #[test]
    fn groups_hold_the_most_items_and_bytes_a_call_takes() {
        let sizes = |groups: Vec<Vec<usize>>| groups.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(call_groups(vec![100; 25], 10, 1000)), [10, 10, 5]);
        assert_eq!(sizes(call_groups(vec![300; 9], 10, 1000)), [3, 3, 3]);
        assert_eq!(sizes(call_groups(vec![10, 5000, 10], 10, 1000)), [1, 1, 1]);
        assert!(call_groups(Vec::new(), 10, 1000).is_empty());
    }

    #[test]
    fn details_lose_emails_and_keys_but_keep_the_rest() {
        let detail = r#"ValidationException: bad value "jane@acme.io", key sk_live_abcdefghijklmnopqrstuvwx (x)"#;
        let clean = redact(detail);
        assert_eq!(
            clean,
            r#"ValidationException: bad value "[redacted]", key [redacted] (x)"#
        );
    }
}
