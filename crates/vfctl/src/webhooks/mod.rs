//! `vfctl webhooks`: the webhook routes through the API (the key's scopes apply, as for
//! any client; `docs/api.md`, "Webhooks"), and `listen`, a receiver on this machine that
//! prints the deliveries it verifies.

mod listen;

use crate::cli::{WebhooksArgs, WebhooksCommand};
use crate::error::CommandError;
use crate::users::{api_url, NO_KEY};
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The API, as one key calls it.
pub struct Api {
    client: reqwest::Client,
    base: Url,
    key: String,
}

impl Api {
    pub fn new(base: &str, key: String) -> Result<Self, CommandError> {
        let base = Url::parse(base).map_err(|_| format!("`{base}` is not a URL"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CommandError::Setup(format!("no HTTP client: {e}")))?;
        Ok(Self { client, base, key })
    }

    /// The URL of `/api/v1/webhooks/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["api", "v1", "webhooks"])
                .extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The answer to `method url` (with `body`), or the API's refusal in one line.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Value, CommandError> {
        let mut request = self.client.request(method, url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        // reqwest's error names the URL, never the key.
        let response = request
            .send()
            .await
            .map_err(|e| CommandError::Api(format!("the API did not answer: {e}")))?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(answer)
        } else {
            Err(CommandError::Api(refusal(status.as_u16(), &answer)))
        }
    }

    /// The `data` of `method /api/v1/webhooks/<segments…>`.
    async fn data(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Value>,
    ) -> Result<Value, CommandError> {
        let answer = self.call(method, self.url(segments, &[]), body).await?;
        Ok(answer["data"].clone())
    }
}

/// The API's error envelope in one line: its status, each error's code, field and message.
fn refusal(status: u16, answer: &Value) -> String {
    let errors: Vec<String> = answer["errors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|error| {
            let field = error["field"]
                .as_str()
                .map(|f| format!(" on {f}"))
                .unwrap_or_default();
            format!(
                "{}{field}: {}",
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    format!("the API answered {status}: {}", errors.join("; "))
}

/// A JSON object of the members given a value (the others left out).
fn members<const N: usize>(members: [(&str, Option<Value>); N]) -> Value {
    let given = members
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)));
    Value::Object(given.collect::<Map<String, Value>>())
}

fn print(value: &Value) {
    println!("{value}");
}

/// Every event type an endpoint may take.
pub const ALL_EVENTS: [&str; 5] = [
    "user.changed",
    "user.deleted",
    "audience.entered",
    "audience.exited",
    "webhook.disabled",
];

pub async fn run(args: WebhooksArgs, local: bool) -> Result<(), CommandError> {
    let key = args.api.key.clone();
    let api = || -> Result<Api, CommandError> {
        let key = key.clone().ok_or(NO_KEY)?;
        Api::new(&api_url(args.api.url.clone(), local)?, key)
    };
    match args.command {
        WebhooksCommand::List => {
            let listed = api()?.data(Method::GET, &[], None).await?;
            listed.as_array().into_iter().flatten().for_each(print);
        }
        WebhooksCommand::Get { id } => print(&api()?.data(Method::GET, &[&id], None).await?),
        WebhooksCommand::Put {
            id,
            target,
            events,
            audiences,
            include_profile,
        } => {
            let body = members([
                ("url", Some(json!(target))),
                ("events", Some(json!(events))),
                (
                    "audiences",
                    (!audiences.is_empty()).then(|| json!(audiences)),
                ),
                ("include", include_profile.then(|| json!(["profile"]))),
            ]);
            print(&api()?.data(Method::PUT, &[&id], Some(body)).await?);
        }
        WebhooksCommand::Delete { id } => print(&api()?.data(Method::DELETE, &[&id], None).await?),
        WebhooksCommand::RotateSecret { id } => print(
            &api()?
                .data(Method::POST, &[&id, "rotate-secret"], None)
                .await?,
        ),
        WebhooksCommand::Deliveries { id, limit } => deliveries(&api()?, &id, limit).await?,
        WebhooksCommand::Replay {
            id,
            since,
            until,
            status,
        } => {
            let body = members([
                ("since", Some(json!(since))),
                ("until", until.map(Value::from)),
                ("status", status.map(Value::from)),
            ]);
            print(
                &api()?
                    .data(Method::POST, &[&id, "replay"], Some(body))
                    .await?,
            );
        }
        WebhooksCommand::Listen {
            port,
            secret,
            register,
            count,
        } => {
            let api = register.as_ref().map(|_| api()).transpose()?;
            let register_as = api.as_ref().zip(register.as_deref());
            listen::run(port, secret, register_as, count).await?;
        }
    }
    Ok(())
}

/// The attempt log, newest first, a page at a time, up to `limit` lines.
async fn deliveries(api: &Api, id: &str, limit: usize) -> Result<(), CommandError> {
    let mut printed = 0;
    let mut cursor: Option<String> = None;
    while printed < limit {
        let mut query = vec![("limit", (limit - printed).min(100).to_string())];
        query.extend(cursor.take().map(|cursor| ("cursor", cursor)));
        let url = api.url(&[id, "deliveries"], &query);
        let page = api.call(Method::GET, url, None).await?;
        for line in page["data"].as_array().into_iter().flatten() {
            print(line);
            printed += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_s_segments_are_encoded_and_the_query_kept() {
        let behind = Api::new("https://gw.example.com/prod", "k".into()).unwrap();
        assert_eq!(
            behind.url(&["crm"], &[]).as_str(),
            "https://gw.example.com/prod/api/v1/webhooks/crm",
            "a base URL's own path is kept"
        );
        let api = Api::new("http://127.0.0.1:9000/", "k".into()).unwrap();
        let url = api.url(&["a/b c", "deliveries"], &[("cursor", "x/1".into())]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9000/api/v1/webhooks/a%2Fb%20c/deliveries?cursor=x%2F1"
        );
        assert_eq!(
            api.url(&[], &[]).as_str(),
            "http://127.0.0.1:9000/api/v1/webhooks"
        );
    }

    #[test]
    fn a_body_holds_only_the_members_given() {
        let body = members([
            ("since", Some(json!("t"))),
            ("until", None),
            ("status", Some(json!("given_up"))),
        ]);
        assert_eq!(body, json!({"since": "t", "status": "given_up"}));
    }

    #[test]
    fn a_refusal_says_each_error_in_one_line() {
        let answer = json!({"errors": [
            {"code": "out_of_range", "field": "since", "message": "since must be within the last 30 days"},
            {"code": "unknown_field", "field": "from", "message": "unknown member `from`"}
        ]});
        assert_eq!(
            refusal(422, &answer),
            "the API answered 422: out_of_range on since: since must be within the last 30 days; unknown_field on from: unknown member `from`"
        );
        assert_eq!(refusal(502, &Value::Null), "the API answered 502: ");
    }
}
