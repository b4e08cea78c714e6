//! VibeFollow Users: the upsert-user ingestion service.
//!
//! Floors, each importing only from the ones below it:
//! - `domain` and `contract`: the rules, pure (no AWS, no I/O);
//! - `app`: the use cases over small ports (`app::ports`);
//! - `aws`: the adapters that implement the ports over DynamoDB, SQS, EventBridge;
//!   `net`: the one to the customers' own endpoints (webhooks);
//! - `lambda`: the edges that turn Lambda events into use-case calls and back.
//!
//! The function binaries only wire these together.

pub mod app;
pub mod aws;
pub mod clock;
pub mod config;
pub mod contract;
pub mod domain;
pub mod lambda;
pub mod metrics;
pub mod net;
pub mod telemetry;

// Re-exported so the function crates wire with the exact versions the library uses.
pub use aws_lambda_events;
pub use aws_sdk_dynamodb;
pub use aws_sdk_eventbridge;
pub use aws_sdk_sqs;
