//! Metrics as CloudWatch Embedded Metric Format: one JSON log line that CloudWatch
//! Logs turns into metrics, so the hot path makes no extra AWS call. The namespace is
//! the stack's (`METRICS_NAMESPACE`); the dashboard and the lag alarm in template.yaml
//! read them.

use serde_json::json;

pub const DEFAULT_NAMESPACE: &str = "VibeFollow/Users";

/// How an api request ended, as the `Outcome` dimension says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Replayed,
    /// Read answered (200).
    Served,
    /// A 4xx, with its error code in the `Code` dimension.
    Refused,
    /// A 5xx.
    ServerError,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Replayed => "replayed",
            Outcome::Served => "served",
            Outcome::Refused => "refused",
            Outcome::ServerError => "server_error",
        }
    }
}

/// One api request: `Requests` = 1 by `Outcome`, and by `Outcome` and `Code` (the
/// contract's error code; `-` for successes).
pub fn request_line(namespace: &str, timestamp_ms: i64, outcome: Outcome, code: &str) -> String {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Function", "Outcome"], ["Function", "Outcome", "Code"]],
                "Metrics": [{"Name": "Requests", "Unit": "Count"}],
            }],
        },
        "Function": "api",
        "Outcome": outcome.as_str(),
        "Code": code,
        "Requests": 1,
    })
    .to_string()
}

/// One Segment request (`/v1/identify`, `/v1/batch`): `SegmentMessages` it carried and
/// `SegmentDropped`, those left out (not identify, no userId, invalid values).
pub fn segment_line(namespace: &str, timestamp_ms: i64, messages: usize, dropped: usize) -> String {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Function"]],
                "Metrics": [
                    {"Name": "SegmentMessages", "Unit": "Count"},
                    {"Name": "SegmentDropped", "Unit": "Count"},
                ],
            }],
        },
        "Function": "api",
        "SegmentMessages": messages,
        "SegmentDropped": dropped,
    })
    .to_string()
}

/// What one consumer batch did: messages applied and failed, traits newly refused,
/// and each applied message's lag (apply time − `accepted_at`, ms) as a distribution.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchMetrics {
    pub applied: usize,
    pub failed: usize,
    pub rejected_traits: usize,
    pub lag_ms: Vec<i64>,
}

/// EMF takes at most 100 values per metric in one document.
const MAX_VALUES: usize = 100;

pub fn batch_line(namespace: &str, timestamp_ms: i64, batch: &BatchMetrics) -> String {
    let mut metrics = vec![
        json!({"Name": "Applied", "Unit": "Count"}),
        json!({"Name": "Failed", "Unit": "Count"}),
        json!({"Name": "RejectedTraits", "Unit": "Count"}),
    ];
    let mut document = json!({
        "Function": "consumer",
        "Applied": batch.applied,
        "Failed": batch.failed,
        "RejectedTraits": batch.rejected_traits,
    });
    // A metric without a value is invalid EMF: Lag only when a message was applied.
    if !batch.lag_ms.is_empty() {
        metrics.push(json!({"Name": "Lag", "Unit": "Milliseconds"}));
        let lag = batch.lag_ms.iter().take(MAX_VALUES).map(|ms| (*ms).max(0));
        document["Lag"] = lag.collect();
    }
    document["_aws"] = json!({
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": namespace,
            "Dimensions": [["Function"]],
            "Metrics": metrics,
        }],
    });
    document.to_string()
}

/// Writes an EMF line to stdout, where Lambda sends it to CloudWatch Logs.
pub fn emit(line: &str) {
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn request_lines_are_emf_with_their_dimensions() {
        let line: Value =
            serde_json::from_str(&request_line("ns", 5, Outcome::Refused, "rate_limited")).unwrap();
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "ns");
        for dimension in directive["Dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d.as_array().unwrap())
        {
            assert!(
                line[dimension.as_str().unwrap()].is_string(),
                "{dimension} has a value"
            );
        }
        assert_eq!(
            (
                line["Outcome"].as_str(),
                line["Code"].as_str(),
                line["Requests"].as_i64()
            ),
            (Some("refused"), Some("rate_limited"), Some(1))
        );
    }

    #[test]
    fn batch_lines_carry_lag_as_a_distribution_only_when_there_is_one() {
        let batch = BatchMetrics {
            applied: 2,
            failed: 1,
            rejected_traits: 0,
            lag_ms: vec![40, -3],
        };
        let line: Value = serde_json::from_str(&batch_line("ns", 5, &batch)).unwrap();
        assert_eq!(line["Lag"], json!([40, 0]));
        let empty: Value =
            serde_json::from_str(&batch_line("ns", 5, &BatchMetrics::default())).unwrap();
        assert!(empty.get("Lag").is_none());
        assert_eq!(
            empty["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
}
