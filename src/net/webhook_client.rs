//! The HTTP client deliveries go out on, built so that no attempt ever connects to an
//! address `domain::webhook::address_allowed` refuses (SSRF, `docs/webhooks.md` §3):
//!
//! - every name is resolved by [`GuardedResolver`], which refuses the whole name when any
//!   of its addresses is refused (so a name never half-works), on every new connection:
//!   a name re-pointed after its `PUT` is refused on its next attempt;
//! - a literal address is checked here before each attempt, since hyper connects to one
//!   without asking the resolver;
//! - no redirect is followed (a 3xx is the endpoint's answer, a failed attempt), no
//!   proxy is used (it would be the address connected to), and each attempt has 15 s.

use crate::app::ports::{PortError, Reply, Sender};
use crate::domain::webhook::{address_allowed, Reach, ATTEMPT_TIMEOUT};
use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// Connections kept for another attempt to the same endpoint this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(30);

/// How a name becomes addresses: the system's resolver on AWS, a table in tests.
pub type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> + Send + Sync>;

/// The system's resolver (`getaddrinfo`, as `tokio::net::lookup_host` calls it).
pub fn system_lookup() -> Lookup {
    Arc::new(|host| {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|address| address.ip()).collect())
        })
    })
}

/// Why an attempt was not made: the address it would connect to is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("address refused: {0}")]
pub struct AddressRefused(pub IpAddr);

/// Resolves names, refusing any whose addresses include a refused one.
pub struct GuardedResolver {
    reach: Reach,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (reach, lookup) = (self.reach, Arc::clone(&self.lookup));
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = lookup(host).await?;
            if let Some(refused) = found.iter().find(|a| !address_allowed(**a, reach)) {
                return Err(Box::new(AddressRefused(*refused)) as _);
            }
            // The port is the URL's: the connector sets it on each address.
            let addrs: Addrs = Box::new(found.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// What an attempt got.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered {
    pub status: u16,
    /// `Retry-After` as sent, when it is text.
    pub retry_after: Option<String>,
    /// The address connected to (the attempt log shows it).
    pub remote_addr: Option<SocketAddr>,
}

/// Why an attempt got no answer, by kind (never the error's text: it can quote the URL),
/// as the attempt log shows it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttemptError {
    #[error("address_refused")]
    AddressRefused(IpAddr),
    #[error("timeout")]
    Timeout,
    #[error("connect")]
    Connect,
    #[error("request")]
    Request,
}

/// The client deliveries go out on: one per instance, its connections reused.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    reach: Reach,
}

impl WebhookClient {
    pub fn new(reach: Reach, lookup: Lookup) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { reach, lookup }))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(reach == Reach::Public)
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .pool_idle_timeout(IDLE_CONNECTION)
            .build()?;
        Ok(Self { client, reach })
    }

    /// POSTs `body` with `headers` to `url`, once.
    pub async fn attempt(
        &self,
        url: &Url,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<Answered, AttemptError> {
        let literal: Option<IpAddr> = match url.host() {
            Some(Host::Ipv4(v4)) => Some(v4.into()),
            Some(Host::Ipv6(v6)) => Some(v6.into()),
            _ => None,
        };
        if let Some(address) = literal.filter(|a| !address_allowed(*a, self.reach)) {
            return Err(AttemptError::AddressRefused(address));
        }
        let mut request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(attempt_error)?;
        Ok(Answered {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            remote_addr: response.remote_addr(),
        })
    }
}

/// The port deliveries attempt through: an answer, or the kind of failure (never the
/// error's text, which can quote the URL).
impl Sender for WebhookClient {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> Result<Reply, PortError> {
        let url = Url::parse(url).map_err(|_| PortError::Refused("url".into()))?;
        let answered = self
            .attempt(&url, headers, body.to_owned())
            .await
            .map_err(|err| PortError::Unavailable(err.to_string()))?;
        Ok(Reply {
            status: answered.status,
            retry_after: answered.retry_after,
        })
    }
}

/// The kind of a failed attempt: a refused address wherever it is in the chain.
fn attempt_error(err: reqwest::Error) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(cause) = source {
        if let Some(AddressRefused(address)) = cause.downcast_ref::<AddressRefused>() {
            return AttemptError::AddressRefused(*address);
        }
        source = cause.source();
    }
    if err.is_timeout() {
        AttemptError::Timeout
    } else if err.is_connect() {
        AttemptError::Connect
    } else {
        AttemptError::Request
    }
}

#[cfg(test)]
#[path = "webhook_client_tests.rs"]
mod tests;
