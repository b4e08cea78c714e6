//! Reads (contract, "Reads"): one user by id, users by email. The rate check first, as
//! for writes; an erased user's tombstone reads as no user.

use super::ports::{Counters, Users};
use super::rate_limit::RateLimiter;
use super::{AppError, Caller};
use crate::contract::{is_storable_user_id, RequestError};
use crate::domain::user_view;
use serde_json::Value;
use std::sync::Arc;

/// A list answer stops short of this size: Lambda refuses responses over 6 MB, and
/// the body travels inside the API Gateway response as an escaped JSON string.
const MAX_ANSWER_BYTES: usize = 5 * 1024 * 1024;

/// Users an email lookup found, as reads show them; `truncated` when more matched than
/// the answer holds.
#[derive(Debug, PartialEq)]
pub struct Found {
    pub users: Vec<Value>,
    pub truncated: bool,
}

pub struct Read<U, C> {
    users: U,
    limiter: Arc<RateLimiter<C>>,
}

impl<U: Users, C: Counters> Read<U, C> {
    pub fn new(users: U, limiter: Arc<RateLimiter<C>>) -> Self {
        Self { users, limiter }
    }

    /// The user as a read shows it; its email only `with_email`.
    pub async fn user(
        &self,
        caller: &Caller,
        external_user_id: &str,
        with_email: bool,
        now_ms: i64,
    ) -> Result<Value, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        // Longer ids are never stored, and DynamoDB refuses keys past 2,048 bytes.
        if !is_storable_user_id(external_user_id) {
            return Err(RequestError::UserNotFound.into());
        }
        let user = self
            .users
            .get(&caller.workspace_id, external_user_id)
            .await?
            .filter(|user| user.profile.exists())
            .ok_or(RequestError::UserNotFound)?;
        Ok(user_view(&user.external_user_id, &user.profile, with_email))
    }

    /// Every user of the workspace with this email (checked after the rate limit).
    pub async fn by_email(
        &self,
        caller: &Caller,
        email: Result<String, RequestError>,
        now_ms: i64,
    ) -> Result<Found, AppError> {
        self.limiter.admit(caller, now_ms, 1).await?;
        let found = self
            .users
            .find_by_email(&caller.workspace_id, &email?)
            .await?;
        let mut truncated = found.truncated;
        let mut users = Vec::with_capacity(found.users.len());
        let mut bytes = 0;
        for user in &found.users {
            let view = user_view(&user.external_user_id, &user.profile, true);
            bytes += escaped_len(&view.to_string());
            // Profiles reach ~300 KB: 100 of them would pass Lambda's 6 MB answer.
            if bytes > MAX_ANSWER_BYTES {
                truncated = true;
                break;
            }
            users.push(view);
        }
        Ok(Found { users, truncated })
    }
}

/// The length of `json` once escaped into a JSON string: quotes and backslashes double.
fn escaped_len(json: &str) -> usize {
    json.len() + json.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}
