//! The adapters: DynamoDB, SQS and EventBridge behind the ports of `crate::app`. They
//! translate, and own AWS's rules and quirks; no business rule lives here.

pub mod dynamodb;
pub mod eventbridge;
pub mod sqs;
pub mod streams;

use crate::app::ports::PortError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::future::Future;
use std::time::Duration;

/// Service error codes worth retrying: throttling and AWS's own failures (the codes
/// the SDK's own retry classifier treats as throttling or transient, and DynamoDB's).
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionConflictException",
    "AWS.SimpleQueueService.RequestThrottled",
    "RequestThrottled",
    "KMS.ThrottlingException",
];

/// An SDK failure as a port error that names its kind or code only: a response's
/// message or debug text can quote the request's data (an email), and port errors
/// reach the logs. A 5xx or a 429 is worth retrying whatever its code says (or when it
/// has none: an intermediary's 502 page).
impl<E: ProvideErrorMetadata> From<SdkError<E, HttpResponse>> for PortError {
    fn from(err: SdkError<E, HttpResponse>) -> Self {
        match &err {
            SdkError::TimeoutError(_) => PortError::Unavailable("timeout".into()),
            SdkError::DispatchFailure(_) => PortError::Unavailable("dispatch failure".into()),
            SdkError::ResponseError(_) => PortError::Unavailable("unreadable response".into()),
            SdkError::ServiceError(service) => {
                service_error(service.err(), service.raw().status().as_u16())
            }
            SdkError::ConstructionFailure(_) => PortError::Refused("request not built".into()),
            _ => PortError::Refused("unknown SDK error".into()),
        }
    }
}

/// A service's error (answered with HTTP `status`) by its code: retryable or refused.
pub(crate) fn service_error(err: &impl ProvideErrorMetadata, status: u16) -> PortError {
    let code = err.code().unwrap_or("Unknown");
    if RETRYABLE_CODES.contains(&code) || (500..600).contains(&status) || status == 429 {
        PortError::Unavailable(code.to_owned())
    } else {
        PortError::Refused(code.to_owned())
    }
}

/// FNV-1a of `bytes`: a hash the same on every machine and build (not
/// `DefaultHasher`'s random keys), for shards and ids derived from keys.
pub(crate) fn stable_hash(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Init waits this long at most for the connections it opens (Lambda allows init 10 s;
/// the SDK alone would retry an unreachable endpoint for longer).
const OPEN_CONNECTIONS_WITHIN: Duration = Duration::from_secs(2);

/// Runs the calls that open a function's connections during init. One that fails or
/// takes too long is opened later by the first request that needs it: worth a log
/// line, not a failed init.
pub async fn open_connections<const N: usize>(
    opening: impl Future<Output = [Result<(), PortError>; N]>,
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
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;

    #[test]
    fn a_5xx_or_429_is_worth_retrying_whatever_its_code_and_a_4xx_only_by_its_code() {
        let error = |code: Option<&str>| {
            let builder = ErrorMetadata::builder();
            match code {
                Some(code) => builder.code(code).build(),
                None => builder.build(),
            }
        };
        let unavailable = |err: PortError| matches!(err, PortError::Unavailable(_));
        assert!(unavailable(service_error(
            &error(Some("InternalFailure")),
            500
        )));
        assert!(unavailable(service_error(&error(None), 502)));
        assert!(unavailable(service_error(&error(Some("Whatever")), 429)));
        assert!(unavailable(service_error(
            &error(Some("ThrottlingException")),
            400
        )));
        assert!(unavailable(service_error(
            &error(Some("TooManyRequestsException")),
            400
        )));
        assert!(!unavailable(service_error(
            &error(Some("ValidationException")),
            400
        )));
        assert!(!unavailable(service_error(&error(None), 400)));
    }
}
