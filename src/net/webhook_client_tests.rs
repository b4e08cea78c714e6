//! The guarded client against listeners on loopback: what it connects to, what it
//! refuses before connecting, and that it follows no redirect.

use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener on loopback answering every request with `answer` (a status line and
/// headers); how many connections it accepted.
async fn listener(answer: &'static str) -> (u16, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0; 4096];
                // The head, then as many body bytes as it announces.
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let reply = format!("{answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}

/// Names resolved by a table: anything else does not exist.
fn table(names: &[(&str, &[IpAddr])]) -> Lookup {
    let names: HashMap<String, Vec<IpAddr>> = names
        .iter()
        .map(|(name, addresses)| ((*name).to_owned(), addresses.to_vec()))
        .collect();
    Arc::new(move |host| {
        let found = names.get(&host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    })
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const METADATA: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254));
const PUBLIC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(93, 184, 215, 14));

#[tokio::test]
async fn a_name_resolving_to_the_metadata_service_is_refused() {
    let lookup = table(&[
        ("metadata.test", &[METADATA]),
        ("mixed.test", &[PUBLIC, METADATA]),
    ]);
    let client = WebhookClient::new(Reach::Public, lookup).unwrap();
    for target in [
        "https://metadata.test/latest/meta-data/",
        "https://mixed.test/",
    ] {
        let attempt = client.attempt(&url(target), &[], "{}".into()).await;
        assert_eq!(
            attempt,
            Err(AttemptError::AddressRefused(METADATA)),
            "{target}"
        );
    }
}

#[tokio::test]
async fn a_refused_address_is_never_connected_to_whether_named_or_literal() {
    let (port, accepted) = listener("HTTP/1.1 200 OK").await;
    let lookup = table(&[("local.test", &[LOOPBACK])]);
    // What AWS runs: loopback refused (the Lambda Runtime API listens there).
    let client = WebhookClient::new(Reach::Public, lookup.clone()).unwrap();
    for target in [
        format!("https://local.test:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let attempt = client.attempt(&url(&target), &[], "{}".into()).await;
        assert!(
            matches!(attempt, Err(AttemptError::AddressRefused(_))),
            "{target}: {attempt:?}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection made");
    // The local switch: loopback over http, as `make dev`'s listener.
    let local = WebhookClient::new(Reach::PublicAndLoopback, lookup).unwrap();
    let answered = local
        .attempt(
            &url(&format!("http://local.test:{port}/hook")),
            &[("webhook-id", "msg_1".into())],
            "{}".into(),
        )
        .await
        .unwrap();
    assert_eq!(answered.status, 200);
    assert_eq!(answered.remote_addr.map(|a| a.ip()), Some(LOOPBACK));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_is_the_endpoints_answer_never_followed() {
    let (port, _) = listener("HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/").await;
    let client = WebhookClient::new(Reach::PublicAndLoopback, table(&[])).unwrap();
    let answered = client
        .attempt(&url(&format!("http://127.0.0.1:{port}/")), &[], "{}".into())
        .await
        .unwrap();
    assert_eq!(answered.status, 302);
}

#[tokio::test]
async fn retry_after_is_read_and_a_closed_port_is_a_connect_failure() {
    let (port, _) = listener("HTTP/1.1 429 Too Many Requests\r\nretry-after: 7").await;
    let client = WebhookClient::new(Reach::PublicAndLoopback, table(&[])).unwrap();
    let answered = client
        .attempt(&url(&format!("http://127.0.0.1:{port}/")), &[], "{}".into())
        .await
        .unwrap();
    assert_eq!(
        (answered.status, answered.retry_after.as_deref()),
        (429, Some("7"))
    );
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let attempt = client
        .attempt(&url(&format!("http://127.0.0.1:{port}/")), &[], "{}".into())
        .await;
    assert_eq!(attempt, Err(AttemptError::Connect));
}

#[tokio::test]
async fn the_systems_resolver_is_guarded_too() {
    let client = WebhookClient::new(Reach::Public, system_lookup()).unwrap();
    let attempt = client
        .attempt(&url("https://localhost:1/"), &[], "{}".into())
        .await;
    assert!(
        matches!(attempt, Err(AttemptError::AddressRefused(address)) if address.is_loopback()),
        "{attempt:?}"
    );
}
