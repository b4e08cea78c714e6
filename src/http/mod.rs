//! The api function: a lambda_http request in, a contract-shaped response out. Checks
//! run in the contract's order: route → authentication → authorisation → rate limit →
//! content type and size → JSON → schema → idempotency → enqueue.

mod error;
mod keys;
mod routes;

pub use error::{ApiError, ErrorAnswer};
pub use routes::Route;

use crate::auth::{bearer_key, key_hash, ApiKeyRecord};
use crate::clock::now_millis;
use crate::config::Resources;
use crate::contract::{
    erase_hash, is_storable_user_id, parse_batch, parse_upsert, user_view,
    validate_idempotency_key, BodyError, ErrorCode, ErrorEnvelope, FieldError, ValidBatch,
    ValidUpsert, MAX_BATCH_BODY_BYTES, MAX_BODY_BYTES,
};
use crate::metrics::{self, Outcome};
use crate::queue::UpsertQueue;
use crate::rate_limit::{RateDecision, RateLimiter};
use crate::store::{ApiKeyStore, Claim, IdempotencyStore, RateLimitStore, UserStore, LOCK_MS};
use crate::upsert::{pack, Changes, Stamp, UpsertMessage, MESSAGE_VERSION};
use keys::KeyCache;
use lambda_http::http::{header, HeaderMap, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Value};
use std::time::Instant;

const ACCEPTED_BODY: &str = r#"{"data":{"accepted":true}}"#;
/// A list answer stops short of this size: Lambda refuses responses over 6 MB, and
/// the body travels inside the API Gateway response as an escaped JSON string.
const MAX_ANSWER_BYTES: usize = 5 * 1024 * 1024;

/// The length of `json` once escaped into a JSON string: quotes and backslashes double.
fn escaped_len(json: &str) -> usize {
    json.len() + json.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}

/// Everything the api function needs, built once per cold start.
pub struct App {
    keys: KeyCache,
    rate_limiter: RateLimiter<RateLimitStore>,
    default_rate_limit: u32,
    metrics_namespace: String,
    idempotency: IdempotencyStore,
    users: UserStore,
    queue: UpsertQueue,
}

/// A successful answer, before it becomes a response.
enum Success {
    Accepted {
        replayed: bool,
    },
    /// A batch's answer: 202 when every upsert was accepted, 207 otherwise.
    Batch {
        replayed: bool,
        accepted: usize,
        rejected: Vec<Rejected>,
    },
    Data(Value),
    /// A list answer; `truncated` when more matched than it holds.
    Page {
        data: Value,
        truncated: bool,
    },
}

/// One refused upsert of a batch.
#[derive(serde::Serialize)]
struct Rejected {
    index: usize,
    errors: Vec<FieldError>,
}

/// What one request did, for its log line.
#[derive(Default)]
struct Trace {
    workspace_id: Option<String>,
    replayed: bool,
    /// Upserts in a batch.
    users: Option<usize>,
}

/// What an accepted write puts on the queue.
enum Outgoing {
    One {
        external_user_id: String,
        changes: Changes,
        erase: bool,
    },
    /// A batch's valid upserts, each with its index in the batch.
    Batch(Vec<(usize, ValidUpsert)>),
}

/// What the idempotent enqueue did.
struct Enqueued {
    replayed: bool,
    /// Batch entries that could not be enqueued (by index in the batch).
    unsent: Vec<usize>,
}

impl App {
    pub fn new(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        Self {
            keys: KeyCache::new(ApiKeyStore::new(
                dynamodb.clone(),
                &resources.api_keys_table,
            )),
            rate_limiter: RateLimiter::new(RateLimitStore::new(
                dynamodb.clone(),
                &resources.rate_limits_table,
            )),
            default_rate_limit: resources.default_rate_limit,
            metrics_namespace: resources.metrics_namespace.clone(),
            idempotency: IdempotencyStore::new(dynamodb.clone(), &resources.idempotency_table),
            users: UserStore::new(dynamodb, &resources.users_table),
            queue: UpsertQueue::new(aws_sdk_sqs::Client::new(sdk), &resources.upsert_queue_url),
        }
    }

    /// Opens the connections to DynamoDB and SQS during init, where Lambda is seen to give
    /// more CPU than a 128 MB function gets later: otherwise the first request pays for
    /// them (TLS at 128 MB takes hundreds of ms).
    pub async fn open_connections(&self) {
        crate::aws::open_connections(async {
            let (dynamodb, sqs) =
                futures::join!(self.keys.open_connection(), self.queue.open_connection());
            [dynamodb, sqs]
        })
        .await;
    }

    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let request_id = request
            .lambda_context_ref()
            .map(|context| context.request_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut trace = Trace::default();
        let route = Route::of(request.method(), request.uri().path());
        let result = match &route {
            Ok(route) => self.serve(route, &request, &request_id, &mut trace).await,
            Err(err) => Err(err.clone().into_error()),
        };
        let (response, detail, outcome, code) = match result {
            Ok(success) => {
                let outcome = match success {
                    Success::Accepted { replayed: false }
                    | Success::Batch {
                        replayed: false, ..
                    } => Outcome::Accepted,
                    Success::Accepted { replayed: true }
                    | Success::Batch { replayed: true, .. } => Outcome::Replayed,
                    Success::Data(_) | Success::Page { .. } => Outcome::Served,
                };
                (success_response(success, &request_id), None, outcome, None)
            }
            Err(err) => {
                let detail = err.log_detail().map(str::to_owned);
                let answer = err.answer();
                let outcome = if answer.status.is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Refused
                };
                let code = answer.errors.first().map(|error| error.code);
                (error_response(answer, &request_id), detail, outcome, code)
            }
        };
        let code = code
            .and_then(|code| serde_json::to_value(code).ok())
            .and_then(|code| code.as_str().map(str::to_owned));
        metrics::emit(&metrics::request_line(
            &self.metrics_namespace,
            now_millis(),
            outcome,
            code.as_deref().unwrap_or("-"),
        ));
        let status = response.status().as_u16();
        tracing::info!(
            request_id = %request_id,
            workspace = trace.workspace_id.as_deref().unwrap_or("-"),
            route = route.as_ref().map_or("unknown", Route::name),
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            replayed = trace.replayed,
            users = trace.users,
            error = detail.as_deref(),
            "request"
        );
        response
    }

    async fn serve(
        &self,
        route: &Route,
        request: &Request,
        request_id: &str,
        trace: &mut Trace,
    ) -> Result<Success, ApiError> {
        let headers = request.headers();
        let key = self.authenticate(headers).await?;
        trace.workspace_id = Some(key.workspace_id.clone());
        if !key.allows(route.scope()) {
            return Err(ApiError::InsufficientScope(route.scope()));
        }
        let now_ms = now_millis();
        // What an accepted write is stamped with (contract: stamped at acceptance).
        let stamp = Stamp {
            accepted_at: now_ms,
            request_id: request_id.to_owned(),
        };
        match route {
            Route::Upsert | Route::DeleteUser(_) => {
                let replayed = match route {
                    Route::DeleteUser(id) => self.erase(&key, headers, id, stamp).await?,
                    _ => self.upsert(&key, headers, request.body(), stamp).await?,
                };
                trace.replayed = replayed;
                Ok(Success::Accepted { replayed })
            }
            Route::Batch => {
                self.batch(&key, headers, request.body(), stamp, trace)
                    .await
            }
            Route::GetUser(external_user_id) => {
                self.admit(&key, now_ms, 1).await?;
                // Longer ids are never stored, and DynamoDB refuses keys past 2,048 bytes.
                if !is_storable_user_id(external_user_id) {
                    return Err(ApiError::UserNotFound);
                }
                let user = self.users.get(&key.workspace_id, external_user_id).await?;
                // An erased user's tombstone reads as no user.
                let user = user
                    .filter(|user| user.profile.exists())
                    .ok_or(ApiError::UserNotFound)?;
                let with_email = key.allows(crate::auth::Scope::UsersReadPii);
                Ok(Success::Data(user_view(
                    &user.external_user_id,
                    &user.profile,
                    with_email,
                )))
            }
            Route::FindByEmail => {
                self.admit(&key, now_ms, 1).await?;
                let email = routes::email_query(request.query_string_parameters_ref())?;
                let found = self.users.find_by_email(&key.workspace_id, &email).await?;
                let mut truncated = found.truncated;
                let mut views = Vec::with_capacity(found.users.len());
                let mut bytes = 0;
                for user in &found.users {
                    let view = user_view(&user.external_user_id, &user.profile, true);
                    bytes += escaped_len(&view.to_string());
                    // Profiles reach ~300 KB: 100 of them would pass Lambda's 6 MB answer.
                    if bytes > MAX_ANSWER_BYTES {
                        truncated = true;
                        break;
                    }
                    views.push(view);
                }
                Ok(Success::Page {
                    data: Value::Array(views),
                    truncated,
                })
            }
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<ApiKeyRecord, ApiError> {
        let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let key = bearer_key(header).map_err(ApiError::Credentials)?;
        self.keys
            .active_key(&key_hash(key))
            .await?
            .ok_or(ApiError::InvalidApiKey)
    }

    /// A refusal found before any I/O, answered after the rate check that comes first
    /// in the contract's order of checks: a 429 wins over it.
    async fn refuse_after_rate_check(
        &self,
        key: &ApiKeyRecord,
        stamp: &Stamp,
        refused: ApiError,
    ) -> ApiError {
        match self.admit(key, stamp.accepted_at, 1).await {
            Ok(()) => refused,
            Err(limited) => limited,
        }
    }

    /// The rate-limit step of the contract's order of checks, for a request that counts
    /// as `cost` requests. A request never costs more than a second's rate, or a
    /// low-rate key could never send a full batch.
    async fn admit(&self, key: &ApiKeyRecord, now_ms: i64, cost: u64) -> Result<(), ApiError> {
        let rate = key.rate_limit.unwrap_or(self.default_rate_limit);
        match self
            .rate_limiter
            .check(&key.workspace_id, rate, cost.min(u64::from(rate)), now_ms)
            .await?
        {
            RateDecision::Allowed => Ok(()),
            RateDecision::Limited { retry_after_secs } => Err(ApiError::RateLimited {
                rate,
                retry_after_secs,
            }),
        }
    }

    /// Accepts one upsert; returns whether it was a replay of an earlier request.
    async fn upsert(
        &self,
        key: &ApiKeyRecord,
        headers: &HeaderMap,
        body: &Body,
        stamp: Stamp,
    ) -> Result<bool, ApiError> {
        let (upsert, idempotency_key) =
            match checked_body(headers, body, &UPSERT_BODY, parse_upsert) {
                Ok(checked) => checked,
                Err(refused) => {
                    return Err(self.refuse_after_rate_check(key, &stamp, refused).await)
                }
            };
        let ValidUpsert {
            external_user_id,
            changes,
            body_hash,
        } = upsert;
        let outgoing = Outgoing::One {
            external_user_id,
            changes,
            erase: false,
        };
        let enqueued = self
            .enqueue(key, outgoing, stamp, 1, &body_hash, idempotency_key)
            .await?;
        Ok(enqueued.replayed)
    }

    /// Accepts the valid upserts of a batch; the answer lists the others.
    async fn batch(
        &self,
        key: &ApiKeyRecord,
        headers: &HeaderMap,
        body: &Body,
        stamp: Stamp,
        trace: &mut Trace,
    ) -> Result<Success, ApiError> {
        let (batch, idempotency_key) = match checked_body(headers, body, &BATCH_BODY, parse_batch) {
            Ok(checked) => checked,
            Err(refused) => return Err(self.refuse_after_rate_check(key, &stamp, refused).await),
        };
        let users = batch.entries.len();
        trace.users = Some(users);
        // Contract: one request per started 100 users.
        let cost = users.div_ceil(100) as u64;
        let ValidBatch { entries, body_hash } = batch;
        let mut rejected: Vec<Rejected> = Vec::new();
        let mut valid: Vec<(usize, ValidUpsert)> = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            match entry {
                Ok(upsert) => valid.push((index, upsert)),
                Err(errors) => rejected.push(Rejected { index, errors }),
            }
        }
        let accepted = valid.len();
        if accepted == 0 {
            self.admit(key, stamp.accepted_at, cost).await?;
            return Ok(Success::Batch {
                replayed: false,
                accepted,
                rejected,
            });
        }
        let Enqueued { replayed, unsent } = self
            .enqueue(
                key,
                Outgoing::Batch(valid),
                stamp,
                cost,
                &body_hash,
                idempotency_key,
            )
            .await?;
        trace.replayed = replayed;
        rejected.extend(unsent.iter().map(|&index| Rejected {
            index,
            errors: vec![FieldError::new(
                ErrorCode::Unavailable,
                format!("users[{index}]"),
                "this upsert could not be enqueued; nothing of it was accepted, send it again",
            )],
        }));
        rejected.sort_by_key(|r| r.index);
        Ok(Success::Batch {
            replayed,
            accepted: accepted - unsent.len(),
            rejected,
        })
    }

    /// Undoes the claim of a request the rate limit refused, so that the refusal
    /// changes nothing. Failures are logged: the 429 stands either way (an unreleased
    /// key stops blocking its retries after its lock, 30 s).
    async fn give_back(
        &self,
        workspace_id: &str,
        idempotency_key: &str,
        claim: Result<Claim, crate::aws::AwsError>,
        ours: &Stamp,
    ) {
        let given_back = match claim {
            Ok(Claim::Claimed) => {
                self.idempotency
                    .release(workspace_id, idempotency_key, &ours.request_id)
                    .await
            }
            Ok(Claim::Abandoned(_)) => {
                let lock_until = ours.accepted_at + LOCK_MS;
                self.idempotency
                    .reopen(workspace_id, idempotency_key, lock_until)
                    .await
            }
            _ => Ok(()),
        };
        if let Err(err) = given_back {
            tracing::warn!(request_id = %ours.request_id, error = %err, "idempotency key not given back after a 429");
        }
    }

    /// Accepts the erasure of a user; returns whether it was a replay.
    async fn erase(
        &self,
        key: &ApiKeyRecord,
        headers: &HeaderMap,
        external_user_id: &str,
        stamp: Stamp,
    ) -> Result<bool, ApiError> {
        let idempotency_key = match checked_erase(headers, external_user_id) {
            Ok(idempotency_key) => idempotency_key,
            Err(refused) => return Err(self.refuse_after_rate_check(key, &stamp, refused).await),
        };
        let outgoing = Outgoing::One {
            external_user_id: external_user_id.to_owned(),
            changes: Changes::default(),
            erase: true,
        };
        let body_hash = erase_hash(external_user_id);
        let enqueued = self
            .enqueue(key, outgoing, stamp, 1, &body_hash, idempotency_key)
            .await?;
        Ok(enqueued.replayed)
    }

    /// Puts an accepted write on the queue with `stamp`; returns the batch entries
    /// that could not be enqueued. Fails only when nothing was enqueued.
    async fn send(
        &self,
        workspace_id: &str,
        outgoing: Outgoing,
        stamp: &Stamp,
    ) -> Result<Vec<usize>, ApiError> {
        let message = |external_user_id, changes, erase, stamp| UpsertMessage {
            version: MESSAGE_VERSION,
            workspace_id: workspace_id.to_owned(),
            external_user_id,
            stamp,
            changes,
            erase,
        };
        let upserts = match outgoing {
            Outgoing::One {
                external_user_id,
                changes,
                erase,
            } => {
                let one = message(external_user_id, changes, erase, stamp.clone());
                self.queue.send(&one).await?;
                return Ok(Vec::new());
            }
            Outgoing::Batch(upserts) => upserts,
        };
        let indices: Vec<usize> = upserts.iter().map(|(index, _)| *index).collect();
        let messages: Vec<UpsertMessage> = upserts
            .into_iter()
            .map(|(index, upsert)| {
                // Later entries of the batch win: their stamps sort after earlier ones'.
                let entry_stamp = Stamp {
                    accepted_at: stamp.accepted_at,
                    request_id: format!("{}.{index:04}", stamp.request_id),
                };
                message(upsert.external_user_id, upsert.changes, false, entry_stamp)
            })
            .collect();
        let packed = pack(&messages);
        let bodies: Vec<&str> = packed.iter().map(|p| p.body.as_str()).collect();
        let unsent = self.queue.send_all(&bodies).await;
        let unsent_entries: Vec<usize> = unsent
            .bodies
            .iter()
            .flat_map(|&body| packed[body].messages.clone())
            .map(|message| indices[message])
            .collect();
        if let Some(error) = &unsent.error {
            tracing::warn!(request_id = %stamp.request_id, unsent = unsent_entries.len(), error = %error, "batch entries not enqueued");
        }
        if unsent_entries.len() == indices.len() {
            return Err(ApiError::Unavailable(
                unsent.error.unwrap_or_else(|| "no entry enqueued".into()),
            ));
        }
        Ok(unsent_entries)
    }

    /// The rate check, the Idempotency-Key, the send: the common end of every write.
    async fn enqueue(
        &self,
        key: &ApiKeyRecord,
        outgoing: Outgoing,
        mut stamp: Stamp,
        cost: u64,
        body_hash: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Enqueued, ApiError> {
        let workspace_id = &key.workspace_id;
        let Some(idempotency_key) = idempotency_key else {
            self.admit(key, stamp.accepted_at, cost).await?;
            let unsent = self.send(workspace_id, outgoing, &stamp).await?;
            return Ok(Enqueued {
                replayed: false,
                unsent,
            });
        };
        // The claim runs beside the rate check: one round trip instead of two. A claim
        // made for a request the limit refuses is given back, so it changes nothing.
        let (admitted, claim) = tokio::join!(
            self.admit(key, stamp.accepted_at, cost),
            self.idempotency
                .claim(workspace_id, idempotency_key, body_hash, &stamp)
        );
        if let Err(refused) = admitted {
            self.give_back(workspace_id, idempotency_key, claim, &stamp)
                .await;
            return Err(refused);
        }
        match claim? {
            Claim::Claimed => {}
            Claim::Abandoned(original) => stamp = original,
            Claim::Replay(unsent) => {
                return Ok(Enqueued {
                    replayed: true,
                    unsent,
                })
            }
            Claim::InFlight => return Err(ApiError::IdempotencyKeyInUse),
            Claim::Reused => return Err(ApiError::IdempotencyKeyReused),
        }
        // The record names the request that first claimed it (ours, or the one that died).
        let request_id = &stamp.request_id;
        let unsent = match self.send(workspace_id, outgoing, &stamp).await {
            Ok(unsent) => unsent,
            Err(err) => {
                // Release the key so the client's retry is processed, not replayed.
                self.idempotency
                    .release(workspace_id, idempotency_key, request_id)
                    .await?;
                return Err(err);
            }
        };
        // Awaited, not spawned: Lambda freezes the instance once it answers, so a mark
        // left for later could wait for minutes while retries of this key get 409s.
        if let Err(err) = self
            .idempotency
            .complete(workspace_id, idempotency_key, request_id, &unsent)
            .await
        {
            // The upsert is in SQS: still a 202. A retry waits out the lock, then
            // re-enqueues with the original stamp, a duplicate the merge ignores.
            tracing::warn!(request_id = %request_id, error = %err, "idempotency key not marked done");
        }
        Ok(Enqueued {
            replayed: false,
            unsent,
        })
    }
}

/// The checks of an erasure that need no I/O: an id that can exist (others are 404,
/// as on reads), then the Idempotency-Key.
fn checked_erase<'a>(
    headers: &'a HeaderMap,
    external_user_id: &str,
) -> Result<Option<&'a str>, ApiError> {
    if !is_storable_user_id(external_user_id) {
        return Err(ApiError::UserNotFound);
    }
    idempotency_key_of(headers)
}

fn idempotency_key_of(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|raw| validate_idempotency_key(raw.as_bytes()))
        .transpose()
        .map_err(ApiError::InvalidIdempotencyKey)
}

/// A route's body limit, checked on the raw bytes, and what its 413 says.
struct BodyLimit {
    bytes: usize,
    refusal: &'static str,
}

const UPSERT_BODY: BodyLimit = BodyLimit {
    bytes: MAX_BODY_BYTES,
    refusal: "body is over 32 KiB (32,768 bytes)",
};
const BATCH_BODY: BodyLimit = BodyLimit {
    bytes: MAX_BATCH_BODY_BYTES,
    refusal: "body is over 512 KiB (524,288 bytes)",
};

/// The checks of a write that need no I/O, in the contract's order: content type,
/// size, JSON and schema (`parse`), Idempotency-Key.
fn checked_body<'a, T>(
    headers: &'a HeaderMap,
    body: &Body,
    limit: &BodyLimit,
    parse: fn(&[u8]) -> Result<T, BodyError>,
) -> Result<(T, Option<&'a str>), ApiError> {
    if !is_json_content_type(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes: &[u8] = body.as_ref();
    if bytes.len() > limit.bytes {
        return Err(ApiError::PayloadTooLarge(limit.refusal));
    }
    let parsed = parse(bytes)?;
    Ok((parsed, idempotency_key_of(headers)?))
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn json_response(status: StatusCode, body: String, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = header::HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

fn success_response(success: Success, request_id: &str) -> Response<Body> {
    match success {
        Success::Accepted { replayed } => marked_replayed(
            json_response(StatusCode::ACCEPTED, ACCEPTED_BODY.to_owned(), request_id),
            replayed,
        ),
        Success::Batch {
            replayed,
            accepted,
            rejected,
        } => {
            let (status, body) = if rejected.is_empty() {
                (
                    StatusCode::ACCEPTED,
                    json!({ "data": { "accepted": accepted } }),
                )
            } else {
                (
                    StatusCode::MULTI_STATUS,
                    json!({ "data": { "accepted": accepted, "rejected": rejected } }),
                )
            };
            marked_replayed(
                json_response(status, body.to_string(), request_id),
                replayed,
            )
        }
        Success::Data(data) => json_response(
            StatusCode::OK,
            json!({ "data": data }).to_string(),
            request_id,
        ),
        Success::Page { data, truncated } => {
            let body = if truncated {
                json!({ "data": data, "truncated": true })
            } else {
                json!({ "data": data })
            };
            json_response(StatusCode::OK, body.to_string(), request_id)
        }
    }
}

fn marked_replayed(mut response: Response<Body>, replayed: bool) -> Response<Body> {
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    response
}

fn error_response(answer: ErrorAnswer, request_id: &str) -> Response<Body> {
    let body = serde_json::to_string(&ErrorEnvelope {
        errors: &answer.errors,
    })
    .unwrap_or_else(|_| {
        r#"{"errors":[{"code":"internal","message":"internal error"}]}"#.to_owned()
    });
    let mut response = json_response(answer.status, body, request_id);
    for (name, value) in answer.headers {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
