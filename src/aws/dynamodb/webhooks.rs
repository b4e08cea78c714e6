//! The webhooks table (`docs/webhooks.md` §5): a workspace's endpoints, `pk` =
//! `w#<workspace>`, `sk` = `e#<webhook id>`, and their count, `sk` = `#count`, moved in
//! the same transaction as an endpoint created or deleted, so that the most a workspace
//! may have holds under concurrent `PUT`s; and the workspaces with webhooks, `pk` =
//! `hooks#<n>` (n < 16, by workspace), `sk` = `#`, a string set `workspaces` that every
//! `PUT` adds its workspace to before it stores the endpoint.

mod item;

use super::{
    batch_get_consistent, built, condition, condition_held, n, s, stable_shard, transact_once,
    Item, Transacted, PARTITION_KEY,
};
use crate::app::ports::{Disabling, Endpoint, PortError, Stored, WebhookWorkspaces, Webhooks};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use item::{endpoint_from_item, endpoint_item, events_attribute, list};
use std::collections::HashSet;

const SORT_KEY: &str = "sk";
/// The workspace's endpoint count's item (endpoint items start with `e#`).
const COUNT: &str = "#count";
const ENDPOINT_PREFIX: &str = "e#";
/// Items the workspaces with webhooks are spread over: each read by every producer
/// instance every few seconds, so none grows past a few KB or takes every read.
const WORKSPACE_SETS: u64 = 16;
const WORKSPACES: &str = "workspaces";
/// Tries of a `PUT` or `DELETE` whose endpoint, or whose workspace's count, another
/// request writes meanwhile (then 503 with `Retry-After`).
const PUT_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct WebhookStore {
    pub(super) client: Client,
    pub(super) table: String,
}

impl WebhookStore {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    fn workspace_pk(workspace_id: &str) -> String {
        format!("w#{workspace_id}")
    }

    fn key(workspace_id: &str, sk: String) -> Item {
        Item::from([
            (
                PARTITION_KEY.to_owned(),
                s(Self::workspace_pk(workspace_id)),
            ),
            (SORT_KEY.to_owned(), s(sk)),
        ])
    }

    fn endpoint_key(workspace_id: &str, webhook_id: &str) -> Item {
        Self::key(workspace_id, format!("{ENDPOINT_PREFIX}{webhook_id}"))
    }

    /// Replaces the settings of an endpoint that is there, and enables it again with no
    /// failing streak; `None` if none is.
    async fn replace(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
    ) -> Result<Option<Endpoint>, PortError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::endpoint_key(workspace_id, &endpoint.webhook_id)))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":url", s(&endpoint.url))
            .expression_attribute_values(":events", events_attribute(&endpoint.events))
            .expression_attribute_values(":include", AttributeValue::Bool(endpoint.include_profile))
            .expression_attribute_values(":at", n(endpoint.updated_at))
            .return_values(ReturnValue::AllNew);
        let expression = match &endpoint.audiences {
            Some(audiences) => {
                update = update.expression_attribute_values(":audiences", list(audiences));
                "SET #url = :url, events = :events, include_profile = :include, updated_at = :at, audiences = :audiences REMOVE failing_since, disabled_reason, disabled_at, disabled_announced"
            }
            None => "SET #url = :url, events = :events, include_profile = :include, updated_at = :at REMOVE audiences, failing_since, disabled_reason, disabled_at, disabled_announced",
        };
        updated(
            update
                .update_expression(expression)
                .expression_attribute_names("#url", "url")
                .send()
                .await,
        )
    }

    /// Creates an endpoint and counts it, if the workspace has fewer than `most` (the
    /// count's condition, item 1) and the endpoint is not there (item 0: created by a
    /// concurrent `PUT`).
    async fn create(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
        most: usize,
    ) -> Result<Transacted, PortError> {
        let put = built(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(endpoint_item(workspace_id, endpoint)))
                .condition_expression("attribute_not_exists(pk)")
                .build(),
        )?;
        let count = self
            .count(workspace_id, 1)
            .condition_expression("attribute_not_exists(endpoints) OR endpoints < :most")
            .expression_attribute_values(":most", n(most));
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder()
                .update(built(count.build())?)
                .build(),
        ];
        transact_once(&self.client, items).await
    }

    /// Lists the workspace as one with webhooks (a set's `ADD`: the same however often).
    async fn list_workspace(&self, workspace_id: &str) -> Result<(), PortError> {
        let set = stable_shard(workspace_id.bytes(), WORKSPACE_SETS);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::workspace_set_key(set)))
            .update_expression("ADD #workspaces :workspace")
            .expression_attribute_names("#workspaces", WORKSPACES)
            .expression_attribute_values(
                ":workspace",
                AttributeValue::Ss(vec![workspace_id.to_owned()]),
            )
            .send()
            .await?;
        Ok(())
    }

    fn workspace_set_key(set: u64) -> Item {
        Item::from([
            (PARTITION_KEY.to_owned(), s(format!("hooks#{set}"))),
            (SORT_KEY.to_owned(), s("#")),
        ])
    }

    /// A health update of an endpoint (`docs/webhooks.md` §1): `expression` on the
    /// endpoint's item with `values`, if it is there and meets `condition`; whether it did.
    async fn health(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        expression: &str,
        condition_expression: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::endpoint_key(workspace_id, webhook_id)))
            .update_expression(expression)
            .condition_expression(format!("attribute_exists(pk) AND ({condition_expression})"));
        let update = values.into_iter().fold(update, |update, (name, value)| {
            update.expression_attribute_values(name, value)
        });
        condition_held(update.send().await)
    }

    /// The workspace's endpoint count moved by `by`, in an endpoint's transaction.
    fn count(&self, workspace_id: &str, by: i64) -> UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(workspace_id, COUNT.to_owned())))
            .update_expression("ADD endpoints :by")
            .expression_attribute_values(":by", n(by))
    }
}

/// An endpoint update's result: the endpoint as it is now, or `None` when its
/// condition (that the endpoint is there) failed.
fn updated(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>>,
) -> Result<Option<Endpoint>, PortError> {
    match result {
        Ok(out) => Ok(out.attributes.as_ref().and_then(endpoint_from_item)),
        Err(err) => condition(Err::<(), _>(err)).map(|_| None),
    }
}

impl Webhooks for WebhookStore {
    async fn endpoints(&self, workspace_id: &str) -> Result<Vec<Endpoint>, PortError> {
        let mut endpoints = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :endpoints)")
                .expression_attribute_values(":pk", s(Self::workspace_pk(workspace_id)))
                .expression_attribute_values(":endpoints", s(ENDPOINT_PREFIX))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            endpoints.extend(out.items().iter().filter_map(endpoint_from_item));
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(endpoints),
            }
        }
    }

    async fn endpoint(
        &self,
        workspace_id: &str,
        webhook_id: &str,
    ) -> Result<Option<Endpoint>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::endpoint_key(workspace_id, webhook_id)))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.as_ref().and_then(endpoint_from_item))
    }

    async fn put(
        &self,
        workspace_id: &str,
        endpoint: &Endpoint,
        most: usize,
    ) -> Result<Stored, PortError> {
        // Listed first, by every `PUT`: an endpoint is never stored for a workspace
        // whose events are not marked for delivery (endpoints from before the list
        // existed are listed by their next `PUT`). A `PUT` that then fails leaves the
        // workspace listed: that costs fan-outs that find nothing, never an event.
        self.list_workspace(workspace_id).await?;
        for _ in 0..PUT_ATTEMPTS {
            if let Some(now) = self.replace(workspace_id, endpoint).await? {
                return Ok(Stored::Replaced(Box::new(now)));
            }
            match self.create(workspace_id, endpoint, most).await? {
                Transacted::Done => return Ok(Stored::Created),
                // Created meanwhile by another request: replaced on the next round.
                Transacted::ConditionFailed(failed) if failed.contains(&0) => {}
                Transacted::ConditionFailed(_) => return Ok(Stored::Full),
                // Another create or delete held the count: nothing failed, again.
                Transacted::Conflict => {}
            }
        }
        Err(PortError::Unavailable("endpoint kept changing".into()))
    }

    async fn rotate(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        secret: &str,
        previous_until: i64,
    ) -> Result<Option<Endpoint>, PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::endpoint_key(workspace_id, webhook_id)))
            .condition_expression("attribute_exists(pk)")
            .update_expression(
                "SET previous_secret = secret, previous_until = :until, secret = :secret",
            )
            .expression_attribute_values(":until", n(previous_until))
            .expression_attribute_values(":secret", s(secret))
            .return_values(ReturnValue::AllNew);
        updated(update.send().await)
    }

    async fn delete(&self, workspace_id: &str, webhook_id: &str) -> Result<bool, PortError> {
        for _ in 0..PUT_ATTEMPTS {
            let delete = built(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::endpoint_key(workspace_id, webhook_id)))
                    .condition_expression("attribute_exists(pk)")
                    .build(),
            )?;
            let count = self.count(workspace_id, -1);
            let items = vec![
                TransactWriteItem::builder().delete(delete).build(),
                TransactWriteItem::builder()
                    .update(built(count.build())?)
                    .build(),
            ];
            match transact_once(&self.client, items).await? {
                Transacted::Done => return Ok(true),
                // Not there: nothing to delete, nothing to count.
                Transacted::ConditionFailed(_) => return Ok(false),
                // Another create or delete held the count: again.
                Transacted::Conflict => {}
            }
        }
        Err(PortError::Unavailable("endpoint kept changing".into()))
    }

    async fn mark_failing(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        since: i64,
    ) -> Result<(), PortError> {
        self.health(
            workspace_id,
            webhook_id,
            "SET failing_since = :since",
            "attribute_not_exists(failing_since)",
            vec![(":since", n(since))],
        )
        .await?;
        Ok(())
    }

    async fn mark_recovered(&self, workspace_id: &str, webhook_id: &str) -> Result<(), PortError> {
        self.health(
            workspace_id,
            webhook_id,
            "REMOVE failing_since",
            "attribute_exists(failing_since)",
            vec![],
        )
        .await?;
        Ok(())
    }

    async fn disable(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabling: Disabling,
    ) -> Result<bool, PortError> {
        let mut values = vec![
            (":reason", s(disabling.reason.as_str())),
            (":at", n(disabling.at)),
            (":updated", n(disabling.updated_at)),
        ];
        let mut condition =
            "attribute_not_exists(disabled_at) AND updated_at = :updated".to_owned();
        if let Some(since) = disabling.failing_since {
            values.push((":since", n(since)));
            condition.push_str(" AND failing_since = :since");
        }
        self.health(
            workspace_id,
            webhook_id,
            "SET disabled_reason = :reason, disabled_at = :at",
            &condition,
            values,
        )
        .await
    }

    async fn mark_announced(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        disabled_at: i64,
    ) -> Result<(), PortError> {
        self.health(
            workspace_id,
            webhook_id,
            "SET disabled_announced = :yes",
            "disabled_at = :at",
            vec![
                (":yes", AttributeValue::Bool(true)),
                (":at", n(disabled_at)),
            ],
        )
        .await?;
        Ok(())
    }
}

impl WebhookWorkspaces for WebhookStore {
    async fn with_webhooks(&self) -> Result<HashSet<String>, PortError> {
        let keys = (0..WORKSPACE_SETS).map(Self::workspace_set_key).collect();
        let items = batch_get_consistent(&self.client, &self.table, keys).await?;
        Ok(items
            .iter()
            .filter_map(|item| item.get(WORKSPACES)?.as_ss().ok())
            .flatten()
            .cloned()
            .collect())
    }
}
