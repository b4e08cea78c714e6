use super::{condition_held, get_by_key, get_n, get_s, n, s, workspace_key, Item, PARTITION_KEY};
use crate::aws::AwsError;
use crate::contract::normalize_email;
use crate::upsert::{ProfileField, Stamp, UserProfile};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// BatchGetItem's limit on keys per call.
const MAX_BATCH_GET: usize = 100;

/// The GSI that finds users by lower-cased email within a workspace.
pub const EMAIL_INDEX: &str = "email-index";
/// The index's partition key: workspace#lower-cased email.
pub const EMAIL_KEY: &str = "email_key";

/// A user as stored, with the optimistic-locking version of its item.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub external_user_id: String,
    pub profile: UserProfile,
    /// 0 for a user that has no item yet.
    pub version: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Another writer changed the item since it was read.
    Conflict,
}

/// The users table: one item per (workspace, external_user_id) under
/// `pk` = workspace#external_user_id, so a large workspace spreads over partitions.
#[derive(Clone)]
pub struct UserStore {
    client: Client,
    table: String,
}

impl UserStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A strongly consistent read of one user.
    pub async fn get(
        &self,
        workspace_id: &str,
        external_user_id: &str,
    ) -> Result<Option<StoredUser>, AwsError> {
        let key = workspace_key(workspace_id, external_user_id);
        let item = get_by_key(&self.client, &self.table, key, true).await?;
        Ok(item.as_ref().and_then(user_from_item))
    }

    /// Strongly consistent reads of many users in one call per 100 keys (BatchGetItem).
    /// Keys DynamoDB leaves unprocessed are read one by one.
    pub async fn get_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), StoredUser>, AwsError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let request_keys = chunk
                .iter()
                .map(|(workspace_id, id)| {
                    Item::from([(PARTITION_KEY.to_owned(), s(workspace_key(workspace_id, id)))])
                })
                .collect::<Vec<_>>();
            let keys_and_attributes = KeysAndAttributes::builder()
                .set_keys(Some(request_keys))
                .consistent_read(true)
                .build()
                .map_err(|e| AwsError::Internal(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys_and_attributes)
                .send()
                .await?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                if let (Some(workspace_id), Some(user)) =
                    (get_s(item, "workspace_id"), user_from_item(item))
                {
                    found.insert(
                        (workspace_id.to_owned(), user.external_user_id.clone()),
                        user,
                    );
                }
            }
            let unprocessed = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            for key in unprocessed {
                let Some((workspace_id, id)) =
                    get_s(&key, PARTITION_KEY).and_then(|pk| pk.split_once('#'))
                else {
                    continue;
                };
                if let Some(user) = self.get(workspace_id, id).await? {
                    found.insert((workspace_id.to_owned(), id.to_owned()), user);
                }
            }
        }
        Ok(found)
    }

    /// Writes the whole item if its version is still the one that was read.
    pub async fn put(
        &self,
        workspace_id: &str,
        user: &StoredUser,
    ) -> Result<WriteOutcome, AwsError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_user(workspace_id, user)?));
        let request = if user.version == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :read_version")
                .expression_attribute_values(":read_version", n(user.version))
        };
        Ok(if condition_held(request.send().await)? {
            WriteOutcome::Written
        } else {
            WriteOutcome::Conflict
        })
    }

    /// Users of a workspace whose email matches, ignoring case.
    pub async fn find_by_email(
        &self,
        workspace_id: &str,
        email: &str,
    ) -> Result<Vec<StoredUser>, AwsError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(EMAIL_INDEX)
            .key_condition_expression("email_key = :k")
            .expression_attribute_values(":k", s(email_key(workspace_id, email)))
            .send()
            .await?;
        Ok(out.items().iter().filter_map(user_from_item).collect())
    }
}

fn email_key(workspace_id: &str, email: &str) -> String {
    workspace_key(workspace_id, &normalize_email(email))
}

fn item_from_user(workspace_id: &str, user: &StoredUser) -> Result<Item, AwsError> {
    let profile = &user.profile;
    let mut item = Item::from([
        (
            PARTITION_KEY.to_owned(),
            s(workspace_key(workspace_id, &user.external_user_id)),
        ),
        ("workspace_id".to_owned(), s(workspace_id)),
        ("external_user_id".to_owned(), s(&user.external_user_id)),
        ("version".to_owned(), n(user.version + 1)),
    ]);
    for (field, value) in &profile.profile {
        item.insert(field.attribute().to_owned(), s(value));
    }
    if let Some(email) = profile.profile.get(&ProfileField::Email) {
        item.insert(EMAIL_KEY.to_owned(), s(email_key(workspace_id, email)));
    }
    if !profile.traits.is_empty() {
        let traits = serde_dynamo::to_attribute_value(&profile.traits)
            .map_err(|e| AwsError::Internal(format!("traits do not convert to DynamoDB: {e}")))?;
        item.insert("traits".to_owned(), traits);
    }
    let stamps = profile
        .stamps
        .iter()
        .map(|(key, stamp)| {
            (
                key.clone(),
                s(format!("{}/{}", stamp.accepted_at, stamp.request_id)),
            )
        })
        .collect();
    item.insert("stamps".to_owned(), AttributeValue::M(stamps));
    if let Some(created_at) = profile.created_at {
        item.insert("created_at".to_owned(), n(created_at));
    }
    if let Some(updated_at) = profile.updated_at {
        item.insert("updated_at".to_owned(), n(updated_at));
    }
    Ok(item)
}

fn user_from_item(item: &Item) -> Option<StoredUser> {
    let profile_fields = ProfileField::ALL
        .into_iter()
        .filter_map(|field| Some((field, get_s(item, field.attribute())?.to_owned())))
        .collect();
    let traits: BTreeMap<String, Value> = match item.get("traits") {
        Some(traits) => serde_dynamo::from_attribute_value(traits.clone()).ok()?,
        None => BTreeMap::new(),
    };
    let empty = HashMap::new();
    let stamps = item
        .get("stamps")
        .and_then(|v| v.as_m().ok())
        .unwrap_or(&empty)
        .iter()
        .filter_map(|(key, v)| Some((key.clone(), parse_stamp(v.as_s().ok()?)?)))
        .collect();
    Some(StoredUser {
        external_user_id: get_s(item, "external_user_id")?.to_owned(),
        profile: UserProfile {
            profile: profile_fields,
            traits,
            stamps,
            created_at: get_n(item, "created_at"),
            updated_at: get_n(item, "updated_at"),
        },
        version: get_n(item, "version").unwrap_or(0),
    })
}

fn parse_stamp(text: &str) -> Option<Stamp> {
    let (accepted_at, request_id) = text.split_once('/')?;
    Some(Stamp {
        accepted_at: accepted_at.parse().ok()?,
        request_id: request_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_round_trips_a_user() {
        let mut profile = UserProfile::default();
        let mut changes = crate::upsert::Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("Jane@Acme.io".into()));
        changes.profile.insert(ProfileField::Plan, None);
        changes.traits.insert(
            "nested".into(),
            Some(json!({"a": [1, 2.5, "x", null, true]})),
        );
        profile.apply(
            &Stamp {
                accepted_at: 7,
                request_id: "r/1".into(),
            },
            &changes,
        );
        let user = StoredUser {
            external_user_id: "usr#1".into(),
            profile,
            version: 3,
        };
        let item = item_from_user("ws", &user).unwrap();
        assert_eq!(get_s(&item, EMAIL_KEY), Some("ws#jane@acme.io"));
        assert_eq!(get_s(&item, "pk"), Some("ws#usr#1"));
        let back = user_from_item(&item).unwrap();
        assert_eq!(back.version, 4);
        assert_eq!(back.profile, user.profile);
    }
}
