//! The adapters: DynamoDB, SQS and EventBridge behind the ports of `crate::app`. They
//! translate, and own AWS's rules and quirks; no business rule lives here.

pub mod dynamodb;
pub mod eventbridge;
pub mod sqs;
pub mod streams;

use crate::app::ports::PortError;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::future::Future;
use std::time::Duration;

/// Service error codes worth retrying: throttling and AWS's own failures.
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

/// An SDK failure as a port error that names its kind or code only: a response's
/// message or debug text can quote the request's data (an email), and port errors
/// reach the logs.
impl<E: ProvideErrorMetadata, R> From<SdkError<E, R>> for PortError {
    fn from(err: SdkError<E, R>) -> Self {
        match &err {
            SdkError::TimeoutError(_) => PortError::Unavailable("timeout".into()),
            SdkError::DispatchFailure(_) => PortError::Unavailable("dispatch failure".into()),
            SdkError::ResponseError(_) => PortError::Unavailable("unreadable response".into()),
            SdkError::ServiceError(service) => service_error(service.err()),
            SdkError::ConstructionFailure(_) => PortError::Refused("request not built".into()),
            _ => PortError::Refused("unknown SDK error".into()),
        }
    }
}

/// A service's error by its code: retryable or refused.
pub(crate) fn service_error(err: &impl ProvideErrorMetadata) -> PortError {
    let code = err.code().unwrap_or("Unknown");
    if RETRYABLE_CODES.contains(&code) {
        PortError::Unavailable(code.to_owned())
    } else {
        PortError::Refused(code.to_owned())
    }
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
