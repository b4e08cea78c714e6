//! JSON logs, one object per line, for CloudWatch and for `make dev`.

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The crates whose log lines this service writes and vets: its own. Every other crate
/// is capped at warn whatever the configuration asks for: the Lambda runtime logs raw
/// events at debug and trace (the `Authorization` header with the key, bodies with
/// emails), the SDK, its signer and the HTTP stack log request bodies.
const OWN_CRATES: [&str; 3] = ["vibefollow_users", "api", "consumer"];

/// Whether an event may be logged at all: this service's crates at any level (by
/// module path, so that a crate merely named alike is not let through), the others at
/// warn and error.
fn allowed(target: &str, level: &Level) -> bool {
    *level <= Level::WARN
        || OWN_CRATES.iter().any(|own| {
            target
                .strip_prefix(own)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Level from `RUST_LOG`, else Lambda's `AWS_LAMBDA_LOG_LEVEL`, else info. Directives
/// are `level` or `target=level`, comma-separated (`Targets`, not `EnvFilter`: no regex
/// engine in the binary).
pub fn init() {
    let configured = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|level| level.to_lowercase()))
        .unwrap_or_else(|_| "info".to_owned());
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_filter(configured_filter(&configured))
        .with_filter(filter_fn(|meta| allowed(meta.target(), meta.level())));
    tracing_subscriber::registry().with(json).init();
}

fn configured_filter(directives: &str) -> Targets {
    directives
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(Level::INFO))
}

/// What a log line may say of a JSON error: its kind and where, never its text, which
/// can quote the data (`invalid type: string "jane@acme.io"`).
pub fn json_fault(error: &serde_json::Error) -> String {
    format!(
        "{:?} at line {} column {}",
        error.classify(),
        error.line(),
        error.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_is_logged_by_kind_and_place_never_by_the_data_it_quotes() {
        let error = serde_json::from_str::<u64>(r#""jane@acme.io""#).unwrap_err();
        assert!(
            error.to_string().contains("jane@acme.io"),
            "serde_json quotes it"
        );
        let logged = json_fault(&error);
        assert!(!logged.contains("jane"), "{logged}");
        assert_eq!(logged, "Data at line 1 column 14");
    }

    #[test]
    fn no_configuration_lets_the_runtime_log_raw_events() {
        for directives in [
            "trace",
            "debug",
            "lambda_runtime=trace,lambda_http=trace",
            "trace,aws_smithy_runtime=trace",
        ] {
            let configured = configured_filter(directives);
            for (target, level) in [
                ("lambda_runtime", Level::DEBUG),
                ("lambda_http::request", Level::TRACE),
                ("aws_smithy_runtime::client", Level::DEBUG),
                ("aws_sigv4::http_request::sign", Level::TRACE),
                ("hyper_util::client", Level::INFO),
            ] {
                let logged = configured.would_enable(target, &level) && allowed(target, &level);
                assert!(!logged, "{directives}: {target} at {level}");
            }
            assert!(allowed("vibefollow_users::http", &Level::TRACE));
            assert!(allowed("api", &Level::DEBUG));
            assert!(allowed("lambda_runtime", &Level::WARN));
            assert!(
                !allowed("api_gateway_thing", &Level::DEBUG),
                "a crate merely named alike"
            );
        }
    }
}
