//! VibeFollow Users: the upsert-user ingestion service.
//!
//! The pure core (`contract`, `upsert`, `auth`) knows nothing of AWS; `store` and
//! `queue` adapt DynamoDB and SQS to it; `http` and `consumer` turn Lambda events into
//! core calls and back. The function binaries only wire these together.

pub mod auth;
pub mod aws;
pub mod changes;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod events;
pub mod http;
#[cfg(feature = "admin")]
pub mod import;
pub mod metrics;
pub mod queue;
pub mod rate_limit;
pub mod store;
pub mod telemetry;
pub mod upsert;

// Re-exported so the function crates wire with the exact versions the library uses.
pub use aws_lambda_events;
pub use aws_sdk_dynamodb;
pub use aws_sdk_eventbridge;
pub use aws_sdk_sqs;
