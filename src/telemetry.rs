//! JSON logs, one object per line, for CloudWatch and for `make dev`.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Quiet the SDK's internals: their debug output can carry request bodies.
const QUIET_DEPENDENCIES: &str = "aws_smithy_runtime=warn,aws_config=warn,hyper=warn";

/// Level from `RUST_LOG`, else Lambda's `AWS_LAMBDA_LOG_LEVEL`, else info. Directives
/// are `level` or `target=level`, comma-separated (`Targets`, not `EnvFilter`: no regex
/// engine in the binary).
pub fn init() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|level| level.to_lowercase()))
        .unwrap_or_else(|_| "info".to_owned());
    let filter: Targets = format!("{level},{QUIET_DEPENDENCIES}")
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false);
    tracing_subscriber::registry()
        .with(json)
        .with(filter)
        .init();
}
