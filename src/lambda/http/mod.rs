//! The api function's edge: an API Gateway request in, a use case called, a
//! contract-shaped response out, one log line and one metric per request. Checks run in
//! the contract's order: route → authentication → authorisation → (in the use cases)
//! rate limit → content type and size → JSON → schema → idempotency → enqueue.

mod answers;
mod keys;
mod router;

pub use answers::{ApiError, ErrorAnswer};
pub use router::{Route, RouteError};

use crate::app::accept::{Accept, Checked, Write};
use crate::app::ports::{ApiKeys, Counters, IdempotencyKeys, UpsertQueue, Users};
use crate::app::rate_limit::RateLimiter;
use crate::app::read::Read;
use crate::app::Caller;
use crate::aws::dynamodb::{ApiKeyStore, IdempotencyStore, RateLimitStore, UserStore};
use crate::aws::sqs::SqsQueue;
use crate::clock::now_millis;
use crate::config::Resources;
use crate::contract::{
    checked_body, email_query, idempotency_key, is_storable_user_id, parse_batch, parse_upsert,
    BodyError, BodyLimit, RequestError, BATCH_BODY, UPSERT_BODY,
};
use crate::domain::auth::{bearer_key, key_hash, ApiKeyRecord, Scope};
use crate::domain::Stamp;
use crate::metrics::{self, Outcome};
use answers::{error_response, success_response, Success};
use keys::{KeyCache, Lookup};
use lambda_http::http::{header, HeaderMap};
use lambda_http::{Body, Request, RequestExt, Response};
use std::sync::Arc;
use std::time::Instant;

/// Everything the api function needs, built once per cold start.
pub struct Api<K, I, Q, C, U> {
    keys: KeyCache<K>,
    accept: Accept<I, Q, C>,
    read: Read<U, C>,
    default_rate_limit: u32,
    metrics_namespace: String,
}

/// The api over DynamoDB and SQS.
pub type AwsApi = Api<ApiKeyStore, IdempotencyStore, SqsQueue, RateLimitStore, UserStore>;

impl AwsApi {
    /// Builds the adapters and opens their connections during init, where Lambda is
    /// seen to give more CPU than a 128 MB function gets later: otherwise the first
    /// request pays for them (TLS at 128 MB takes hundreds of ms).
    pub async fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let api_keys = ApiKeyStore::new(dynamodb.clone(), &resources.api_keys_table);
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &resources.upsert_queue_url);
        crate::aws::open_connections(async {
            let (dynamodb, sqs) =
                futures::join!(api_keys.open_connection(), queue.open_connection());
            [dynamodb, sqs]
        })
        .await;
        let limiter = Arc::new(RateLimiter::new(RateLimitStore::new(
            dynamodb.clone(),
            &resources.rate_limits_table,
        )));
        Api {
            keys: KeyCache::new(api_keys),
            accept: Accept::new(
                IdempotencyStore::new(dynamodb.clone(), &resources.idempotency_table),
                queue,
                Arc::clone(&limiter),
            ),
            read: Read::new(UserStore::new(dynamodb, &resources.users_table), limiter),
            default_rate_limit: resources.default_rate_limit,
            metrics_namespace: resources.metrics_namespace.clone(),
        }
    }
}

/// What one request did, for its log line.
#[derive(Default)]
struct Trace {
    workspace_id: Option<String>,
    replayed: bool,
    /// Upserts in a batch.
    users: Option<usize>,
    /// Whether the API key came from the instance's cache.
    key_cached: Option<bool>,
}

impl<K, I, Q, C, U> Api<K, I, Q, C, U>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
{
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
            Err(err) => Err(err.clone().into()),
        };
        let (response, detail, outcome, code) = match result {
            Ok(success) => {
                let outcome = match &success {
                    Success::Accepted(accepted) if accepted.replayed() => Outcome::Replayed,
                    Success::Accepted(_) => Outcome::Accepted,
                    Success::User(_) | Success::Found(_) => Outcome::Served,
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
            key_cached = trace.key_cached,
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
        let key = self.authenticate(headers, trace).await?;
        trace.workspace_id = Some(key.workspace_id.clone());
        if !key.allows(route.scope()) {
            return Err(ApiError::InsufficientScope(route.scope()));
        }
        let caller = Caller {
            workspace_id: key.workspace_id.clone(),
            rate: key.rate_limit.unwrap_or(self.default_rate_limit),
        };
        let now_ms = now_millis();
        // What an accepted write is stamped with (contract: stamped at acceptance).
        let stamp = Stamp {
            accepted_at: now_ms,
            request_id: request_id.to_owned(),
        };
        let body = request.body().as_ref();
        let checked = match route {
            Route::Upsert => checked(headers, body, &UPSERT_BODY, parse_upsert, Write::Upsert),
            Route::Batch => checked(headers, body, &BATCH_BODY, parse_batch, Write::Batch),
            Route::DeleteUser(id) => checked_erase(headers, id),
            Route::GetUser(id) => {
                let with_email = key.allows(Scope::UsersReadPii);
                let user = self.read.user(&caller, id, with_email, now_ms).await?;
                return Ok(Success::User(user));
            }
            Route::FindByEmail => {
                let query = request.query_string_parameters_ref();
                let email = email_query(query.and_then(|q| q.first("email")));
                return Ok(Success::Found(
                    self.read.by_email(&caller, email, now_ms).await?,
                ));
            }
        };
        if let Ok(Checked {
            write: Write::Batch(batch),
            ..
        }) = &checked
        {
            trace.users = Some(batch.entries.len());
        }
        let accepted = self.accept.accept(&caller, checked, stamp).await?;
        trace.replayed = accepted.replayed();
        Ok(Success::Accepted(accepted))
    }

    async fn authenticate(
        &self,
        headers: &HeaderMap,
        trace: &mut Trace,
    ) -> Result<ApiKeyRecord, ApiError> {
        let key = bearer_key(header(headers, header::AUTHORIZATION))?;
        let (record, lookup) = self.keys.active_key(&key_hash(key)).await?;
        trace.key_cached = Some(lookup == Lookup::Cached);
        record.ok_or(ApiError::InvalidApiKey)
    }
}

fn header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&[u8]> {
    headers.get(name).map(|value| value.as_bytes())
}

/// A write's checks that need no I/O: content type, size, JSON and schema, then the
/// Idempotency-Key.
fn checked<T>(
    headers: &HeaderMap,
    body: &[u8],
    limit: &BodyLimit,
    parse: fn(&[u8]) -> Result<T, BodyError>,
    write: fn(T) -> Write,
) -> Result<Checked, RequestError> {
    let parsed = checked_body(header(headers, header::CONTENT_TYPE), body, limit, parse)?;
    Ok(Checked {
        write: write(parsed),
        idempotency_key: idempotency_key(header(headers, "idempotency-key"))?,
    })
}

/// An erasure's checks: an id that can exist (others are 404, as on reads), then the
/// Idempotency-Key.
fn checked_erase(headers: &HeaderMap, external_user_id: &str) -> Result<Checked, RequestError> {
    if !is_storable_user_id(external_user_id) {
        return Err(RequestError::UserNotFound);
    }
    Ok(Checked {
        write: Write::Erase {
            external_user_id: external_user_id.to_owned(),
        },
        idempotency_key: idempotency_key(header(headers, "idempotency-key"))?,
    })
}
