//! The webhooks' side of the ports: the endpoints each workspace subscribes.

use super::PortError;
use crate::domain::webhook::{EventType, Secret};
use std::collections::BTreeSet;
use std::future::Future;

/// An endpoint as stored (`docs/webhooks.md` §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub webhook_id: String,
    pub url: String,
    pub events: BTreeSet<EventType>,
    /// Only these audiences' events, when given.
    pub audiences: Option<BTreeSet<String>>,
    pub include_profile: bool,
    /// Signs every delivery.
    pub secret: Secret,
    /// The secret before the last rotation, and until when (ms) it signs too.
    pub previous_secret: Option<(Secret, i64)>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What storing an endpoint did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A new endpoint, with the secret it was given.
    Created,
    /// The endpoint was there: its settings replaced, its secrets and `created_at`
    /// kept. As it is now.
    Replaced(Endpoint),
    /// A new endpoint, but the workspace has the most it may have.
    Full,
}

/// Webhook endpoints, by workspace. Reads are strongly consistent.
pub trait Webhooks {
    /// The workspace's endpoints, by id (at most a few dozen: `MAX_WEBHOOKS`).
    fn endpoints(
        &self,
        workspace_id: &str,
    ) -> impl Future<Output = Result<Vec<Endpoint>, PortError>> + Send;

    fn endpoint(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<Option<Endpoint>, PortError>> + Send;

    /// Creates `endpoint` if the workspace has fewer than `most`, or replaces the
    /// settings (url, events, audiences, include, `updated_at`) of the one with its id.
    fn put(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
        most: usize,
    ) -> impl Future<Output = Result<Stored, PortError>> + Send;

    /// Gives the endpoint a new secret, the current one signing until `previous_until`
    /// (an older previous one is dropped). The endpoint as it is now; `None` if there is
    /// none.
    fn rotate(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        secret: &str,
        previous_until: i64,
    ) -> impl Future<Output = Result<Option<Endpoint>, PortError>> + Send;

    /// Deletes the endpoint; `false` if there was none.
    fn delete(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;
}
