//! JSON logs, one object per line, for CloudWatch and for `make dev`.

use tracing_subscriber::EnvFilter;

/// Quiet the SDK's internals: their debug output can carry request bodies.
const DEFAULT_FILTER: &str = "info,aws_smithy_runtime=warn,aws_config=warn,hyper=warn";

/// Level from `RUST_LOG`, else Lambda's `AWS_LAMBDA_LOG_LEVEL`, else info.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|level| level.to_lowercase()))
        .map(|level| format!("{level},aws_smithy_runtime=warn,aws_config=warn,hyper=warn"))
        .unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_env_filter(EnvFilter::new(filter))
        .init();
}
