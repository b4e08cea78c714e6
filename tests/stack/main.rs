//! The integration tests: the whole path against the local stack (`make test` starts
//! it, runs every binary of the workspace under the Lambda-faithful runtime, and runs
//! these with `--include-ignored`). A plain `cargo test` runs only the template checks
//! here and lists the rest as ignored: "needs the local stack: run `make test`".

mod support;

mod audiences;
mod batch;
mod build_progress;
mod change_events;
mod consumer_and_reads;
mod dlq;
mod dynamodb_limits;
mod erase;
mod faults;
mod import;
mod lambda_fleet;
mod lambda_freeze;
mod logs;
mod metrics;
mod migration;
mod profile_limits;
mod rate_counter;
mod sample_events;
mod segment;
mod source_time;
mod template;
mod upsert_contract;
mod vfctl;
mod webhook_deliveries;
mod webhook_vfctl;
mod webhooks;
