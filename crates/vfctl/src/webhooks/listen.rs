//! `vfctl webhooks listen`: an HTTP receiver on 127.0.0.1 that verifies each delivery
//! with the Standard Webhooks library and prints the verified ones, one JSON object a
//! line. What a customer's receiver does, for trying webhooks against `make dev`.

use super::{Api, ALL_EVENTS};
use crate::error::CommandError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use standardwebhooks::Webhook;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A delivery body larger than this is refused (413): ours are a few KB, with a
/// profile up to ~420 KB.
const MAX_BODY_BYTES: usize = 1 << 20;
/// How long the last deliveries' answers may take once the count is reached.
const LAST_ANSWERS_WITHIN: Duration = Duration::from_secs(5);

/// Points endpoint `id` at `port`, for every event type, and returns its secret: shown
/// by the `PUT` that creates it, else a new one by a rotation (the previous keeps
/// signing 24 hours, so another receiver of it goes on verifying).
pub async fn register(api: &Api, id: &str, port: u16) -> Result<String, CommandError> {
    let here = json!({"url": format!("http://127.0.0.1:{port}/"), "events": ALL_EVENTS});
    let endpoint = api.data(reqwest::Method::PUT, &[id], Some(here)).await?;
    let secret = match endpoint["secret"].as_str() {
        Some(secret) => secret.to_owned(),
        None => {
            let rotated = api
                .data(reqwest::Method::POST, &[id, "rotate-secret"], None)
                .await?;
            rotated["secret"].as_str().unwrap_or_default().to_owned()
        }
    };
    if secret.is_empty() {
        return Err(CommandError::Api("the API gave no secret".into()));
    }
    Ok(secret)
}

/// The listener of `listen`: bound first (so that a port in use fails before any
/// endpoint is pointed at it), then registered if asked (`--port 0` takes any port),
/// then receiving until `count` distinct deliveries (or Ctrl-C).
pub async fn run(
    port: u16,
    secret: Option<String>,
    register_as: Option<(&Api, &str)>,
    count: Option<usize>,
) -> Result<(), CommandError> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?
        .port();
    let secret = match (register_as, secret) {
        (Some((api, id)), _) => register(api, id, port).await?,
        (None, Some(secret)) => secret,
        (None, None) => return Err("pass --secret or --register".into()),
    };
    let verifier = Webhook::new(&secret).map_err(|_| "the secret is not a whsec_ secret")?;
    let named = register_as
        .map(|(_, id)| format!(" (webhook `{id}`)"))
        .unwrap_or_default();
    eprintln!("listening on http://127.0.0.1:{port}/{named}: verified deliveries print below");
    receive(listener, verifier, count, |line| println!("{line}")).await
}

/// What each connection shares: the verifier, where verified deliveries go, and
/// whether the count is reached (then deliveries are refused 503, to be retried).
struct Receiver {
    verifier: Webhook,
    verified: mpsc::UnboundedSender<(String, Value)>,
    done: AtomicBool,
}

/// Receives on `listener` until `count` distinct `webhook-id`s verified (each printed,
/// a repeat marked `"repeat": true`), then answers what is in flight and returns.
pub async fn receive(
    listener: TcpListener,
    verifier: Webhook,
    count: Option<usize>,
    mut print: impl FnMut(&Value),
) -> Result<(), CommandError> {
    let (sender, mut verified) = mpsc::unbounded_channel();
    let receiver = Arc::new(Receiver {
        verifier,
        verified: sender,
        done: AtomicBool::new(false),
    });
    let mut connections = JoinSet::new();
    let mut seen = HashSet::new();
    while count.is_none_or(|count| seen.len() < count) {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&receiver)));
                }
                // Out of file descriptors, say: the next accept may do.
                Err(e) => {
                    eprintln!("vfctl: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some((id, body)) = verified.recv() => {
                let repeat = !seen.insert(id.clone());
                let mut line = json!({"webhook-id": id, "body": body});
                if repeat {
                    line["repeat"] = json!(true);
                }
                print(&line);
            }
        }
    }
    receiver.done.store(true, Ordering::SeqCst);
    drop(listener);
    // Each connection serves one request: it ends once its answer is written.
    let answered = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(LAST_ANSWERS_WITHIN, answered).await;
    Ok(())
}

/// One connection, one request (no keep-alive, so that it ends with its answer).
async fn connection(stream: TcpStream, receiver: Arc<Receiver>) {
    let service = hyper::service::service_fn(move |request| {
        let receiver = Arc::clone(&receiver);
        async move { Ok::<_, std::convert::Infallible>(answer(request, &receiver).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// 200 to a delivery that verifies (its line sent on), 401 to one that does not, 405
/// to another method, 413 to a body past [`MAX_BODY_BYTES`], 503 once the count is
/// reached (the service retries it later: nothing is lost).
async fn answer(request: Request<Incoming>, receiver: &Receiver) -> Response<Full<Bytes>> {
    let status = |status: StatusCode| {
        let mut response = Response::new(Full::default());
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let body = body.to_bytes();
    if receiver.verifier.verify(&body, &parts.headers).is_err() {
        return status(StatusCode::UNAUTHORIZED);
    }
    if receiver.done.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let id = parts
        .headers
        .get("webhook-id")
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = receiver.verified.send((id, body));
    status(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    async fn post(url: &str, secret: &str, id: &str, body: &str) -> Option<u16> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = Webhook::new(secret)
            .unwrap()
            .sign(id, now, body.as_bytes())
            .unwrap();
        let response = reqwest::Client::new()
            .post(url)
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        response.ok().map(|r| r.status().as_u16())
    }

    #[tokio::test]
    async fn deliveries_that_verify_are_printed_until_the_count_of_distinct_ones_then_it_stops() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (printed_to, mut printed) = mpsc::unbounded_channel();
        let verifier = Webhook::new(SECRET).unwrap();
        let receiving = tokio::spawn(receive(listener, verifier, Some(2), move |line| {
            printed_to.send(line.clone()).unwrap();
        }));
        let other = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(post(&url, other, "msg_0", "{}").await, Some(401));
        let unsigned = reqwest::Client::new().get(&url).send().await.unwrap();
        assert_eq!(unsigned.status().as_u16(), 405);
        let body = r#"{"type":"user.changed","sequence":1}"#;
        assert_eq!(post(&url, SECRET, "msg_1", body).await, Some(200));
        assert_eq!(post(&url, SECRET, "msg_1", body).await, Some(200));
        assert_eq!(post(&url, SECRET, "msg_2", "{}").await, Some(200));
        receiving.await.unwrap().unwrap();
        let lines: Vec<Value> = std::iter::from_fn(|| printed.try_recv().ok()).collect();
        let parsed = json!({"type": "user.changed", "sequence": 1});
        assert_eq!(
            lines,
            [
                json!({"webhook-id": "msg_1", "body": parsed}),
                json!({"webhook-id": "msg_1", "body": parsed, "repeat": true}),
                json!({"webhook-id": "msg_2", "body": {}}),
            ]
        );
        assert_eq!(
            post(&url, SECRET, "msg_3", "{}").await,
            None,
            "no longer listening"
        );
    }
}
