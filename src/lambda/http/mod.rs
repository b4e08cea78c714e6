//! The api function's edge: an API Gateway request in, a use case called, a
//! contract-shaped response out, one log line and one metric per request. Checks run in
//! the contract's order: route → authentication → authorisation → (in the use cases)
//! rate limit → content type and size → JSON → schema → idempotency → enqueue.

mod answers;
mod audiences;
mod keys;
mod router;
mod segment;
mod webhooks;

pub use answers::{ApiError, ErrorAnswer};
pub use router::{Route, RouteError};

use crate::app::accept::{Accept, Checked, Write};
use crate::app::curate::Curate;
use crate::app::ports::PortError;
use crate::app::ports::{
    ApiKeys, Audiences, BuildQueue, Counters, DeliveryLog, IdempotencyKeys, Memberships,
    ReplayTasks, UpsertQueue, Users, Webhooks,
};
use crate::app::rate_limit::RateLimiter;
use crate::app::read::Read;
use crate::app::webhooks::Subscriptions;
use crate::app::Caller;
use crate::aws::dynamodb::{
    ApiKeyStore, AudienceStore, IdempotencyStore, RateLimitStore, UserStore, WebhookStore,
};
use crate::aws::sqs::SqsQueue;
use crate::clock::now_millis;
use crate::config::Resources;
use crate::contract::{
    checked_body, email_query, idempotency_key, is_storable_user_id, parse_batch, parse_upsert,
    BodyError, BodyLimit, Page, Paged, RequestError, BATCH_BODY, UPSERT_BODY,
};
use crate::domain::auth::{bearer_key, key_hash, ApiKeyRecord, Scope};
use crate::domain::webhook::Reach;
use crate::domain::Stamp;
use crate::metrics::{self, Outcome};
use answers::{error_response, success_response, Success};
use keys::{KeyCache, Lookup};
use lambda_http::http::{header, HeaderMap};
use lambda_http::{Body, Request, RequestExt, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Everything the api function needs, built once per cold start.
pub struct Api<K, I, Q, C, U, S, B, W> {
    keys: KeyCache<K>,
    accept: Accept<I, Q, C>,
    read: Read<U, C>,
    curate: Curate<S, U, B, I, C>,
    subscriptions: Subscriptions<W, C, B>,
    /// Where webhooks may point (`WEBHOOK_ALLOW_LOCAL`).
    webhook_reach: Reach,
    default_rate_limit: u32,
    metrics_namespace: String,
}

/// The api over DynamoDB and SQS.
pub type AwsApi = Api<
    ApiKeyStore,
    IdempotencyStore,
    SqsQueue,
    RateLimitStore,
    UserStore,
    AudienceStore,
    SqsQueue,
    WebhookStore,
>;

impl AwsApi {
    /// Builds the adapters and opens their connections during init, where Lambda is
    /// seen to give more CPU than a 128 MB function gets later: otherwise the first
    /// request pays for them (TLS at 128 MB takes hundreds of ms).
    pub async fn on_aws(sdk: &aws_config::SdkConfig, resources: &Resources) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let api_keys = ApiKeyStore::new(dynamodb.clone(), &resources.api_keys_table);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue = SqsQueue::new(sqs.clone(), &resources.upsert_queue_url);
        crate::aws::open_connections(async {
            let (dynamodb, sqs) =
                futures::join!(api_keys.open_connection(), queue.open_connection());
            [dynamodb, sqs]
        })
        .await;
        let limiter = Arc::new(RateLimiter::with_shard_rate(
            RateLimitStore::new(dynamodb.clone(), &resources.rate_limits_table),
            resources.rate_limit_shard_rate,
        ));
        let users = UserStore::new(dynamodb.clone(), &resources.users_table);
        Api {
            keys: KeyCache::new(api_keys),
            accept: Accept::new(
                IdempotencyStore::new(dynamodb.clone(), &resources.idempotency_table),
                queue,
                Arc::clone(&limiter),
            ),
            read: Read::new(users.clone(), Arc::clone(&limiter)),
            curate: Curate::new(
                AudienceStore::new(
                    dynamodb.clone(),
                    &resources.audiences_table,
                    &resources.audience_members_table,
                ),
                users,
                SqsQueue::new(sqs.clone(), &resources.audience_build_queue_url),
                IdempotencyStore::new(dynamodb.clone(), &resources.idempotency_table),
                Arc::clone(&limiter),
            ),
            subscriptions: Subscriptions::new(
                WebhookStore::new(dynamodb, &resources.webhooks_table),
                SqsQueue::new(sqs, &resources.webhook_wake_queue_url),
                limiter,
            ),
            webhook_reach: resources.webhook_reach,
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

impl<K, I, Q, C, U, S, B, W> Api<K, I, Q, C, U, S, B, W>
where
    K: ApiKeys,
    I: IdempotencyKeys,
    Q: UpsertQueue,
    C: Counters,
    U: Users,
    S: Audiences + Memberships,
    B: BuildQueue + ReplayTasks,
    W: Webhooks + DeliveryLog,
{
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let request_id = request
            .lambda_context_ref()
            .map(|context| context.request_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut trace = Trace::default();
        let route = Route::of(request.method(), request.uri().path());
        let deadline = request
            .lambda_context_ref()
            .map(|context| context.deadline());
        let result = match &route {
            Ok(route) => {
                let serving = self.serve(route, &request, &request_id, &mut trace);
                within_deadline(deadline, serving).await
            }
            Err(err) => Err(err.clone().into()),
        };
        let (response, detail, outcome, code) = match result {
            Ok(success) => {
                let outcome = match &success {
                    Success::Accepted(accepted) if accepted.replayed() => Outcome::Replayed,
                    Success::Defined { replayed: true, .. } => Outcome::Replayed,
                    Success::Accepted(_)
                    | Success::Segment { .. }
                    | Success::Defined { .. }
                    | Success::Created(_)
                    | Success::Started(_) => Outcome::Accepted,
                    Success::Data(_) | Success::Page { .. } | Success::Found(_) => Outcome::Served,
                };
                if let Success::Segment {
                    dropped,
                    message_ids,
                } = &success
                {
                    let line = metrics::segment_line(
                        &self.metrics_namespace,
                        now_millis(),
                        message_ids.len(),
                        dropped.len(),
                    );
                    metrics::emit(&line);
                }
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
                let segment = matches!(route, Ok(Route::SegmentIdentify | Route::SegmentBatch));
                let response = error_response(answer, &request_id, segment);
                (response, detail, outcome, code)
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
        let body = request.body().as_ref();
        if let Route::SegmentIdentify | Route::SegmentBatch = route {
            return self.segment(route, headers, body, request_id, trace).await;
        }
        let key = self.authenticate(headers, trace).await?;
        let (caller, stamp) = self.admit(&key, route, request_id, trace)?;
        let now_ms = stamp.accepted_at;
        let checked = match route {
            Route::Upsert => {
                let parse = |body: &[u8]| parse_upsert(body, now_ms);
                checked(headers, body, &UPSERT_BODY, parse, Write::Upsert)
            }
            Route::Batch => {
                let parse = |body: &[u8]| parse_batch(body, now_ms);
                checked(headers, body, &BATCH_BODY, parse, Write::Batch)
            }
            Route::DeleteUser(id) => checked_erase(headers, id),
            Route::GetUser(id) => {
                let with_email = key.allows(Scope::UsersReadPii);
                let user = self.read.user(&caller, id, with_email, now_ms).await?;
                return Ok(Success::Data(user));
            }
            Route::FindByEmail => {
                let query = request.query_string_parameters_ref();
                let email = email_query(query.and_then(|q| q.first("email")));
                return Ok(Success::Found(
                    self.read.by_email(&caller, email, now_ms).await?,
                ));
            }
            Route::ListWebhooks
            | Route::PutWebhook(_)
            | Route::GetWebhook(_)
            | Route::DeleteWebhook(_)
            | Route::RotateWebhookSecret(_)
            | Route::WebhookDeliveries(_)
            | Route::ReplayWebhook(_) => {
                return self.webhooks(route, request, &caller, &key, now_ms).await;
            }
            Route::ListAudiences
            | Route::PutAudience(_)
            | Route::GetAudience(_)
            | Route::DeleteAudience(_)
            | Route::AudienceMembers(_)
            | Route::UserAudiences(_) => {
                return self.audiences(route, request, &caller, stamp, trace).await;
            }
            // Named so that a new route is a compile error here, not a panic.
            Route::SegmentIdentify | Route::SegmentBatch => {
                unreachable!("Segment's routes are served before a key is read")
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
        self.key_record(key, trace).await
    }

    async fn key_record(&self, key: &str, trace: &mut Trace) -> Result<ApiKeyRecord, ApiError> {
        let (record, lookup) = self.keys.active_key(&key_hash(key)).await?;
        trace.key_cached = Some(lookup == Lookup::Cached);
        record.ok_or(ApiError::InvalidApiKey)
    }

    /// The caller `key` speaks for, if it may use `route`, and what its write is
    /// stamped with (contract: stamped at acceptance).
    fn admit(
        &self,
        key: &ApiKeyRecord,
        route: &Route,
        request_id: &str,
        trace: &mut Trace,
    ) -> Result<(Caller, Stamp), ApiError> {
        trace.workspace_id = Some(key.workspace_id.clone());
        if !key.allows(route.scope()) {
            return Err(ApiError::InsufficientScope(route.scope()));
        }
        let caller = Caller {
            workspace_id: key.workspace_id.clone(),
            rate: key.rate_limit.unwrap_or(self.default_rate_limit),
        };
        Ok((caller, Stamp::new(now_millis(), request_id)))
    }
}

/// A request answers this long before Lambda's deadline at the latest: AWS calls still
/// running then are dropped, and the client gets a 503 with `Retry-After` (what the
/// contract promises when AWS is slow) rather than the platform's timeout, which has no
/// envelope and no `Retry-After`. What the request claimed stays safe: an
/// Idempotency-Key left claimed frees itself when its lock runs out.
const ANSWER_BEFORE_DEADLINE: Duration = Duration::from_millis(1_000);

/// `serving`'s answer, or 503 once the invocation's deadline is near.
async fn within_deadline<T>(
    deadline: Option<SystemTime>,
    serving: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let Some(deadline) = deadline else {
        return serving.await;
    };
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(ANSWER_BEFORE_DEADLINE);
    tokio::time::timeout(left, serving)
        .await
        .unwrap_or_else(|_| {
            let late = PortError::Unavailable("answered before the invocation's deadline".into());
            Err(late.into())
        })
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
    parse: impl FnOnce(&[u8]) -> Result<T, BodyError>,
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

/// The page a request's `limit` and `cursor` ask for, of `paged`.
fn page_of(request: &Request, paged: Paged) -> Result<Page, RequestError> {
    let query = request.query_string_parameters_ref();
    paged.query(
        query.and_then(|q| q.first("limit")),
        query.and_then(|q| q.first("cursor")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{
        MemoryApiKeys, MemoryAudiences, MemoryBuilds, MemoryCounters, MemoryKeys, MemoryQueue,
        MemoryUsers, MemoryWebhooks,
    };
    use crate::app::ports::StoredUser;
    use crate::lambda::samples::sample_text;
    use lambda_http::http::StatusCode;
    use serde_json::{json, Value};

    pub(super) type TestApi = Api<
        MemoryApiKeys,
        MemoryKeys,
        MemoryQueue,
        Arc<MemoryCounters>,
        MemoryUsers,
        MemoryAudiences,
        MemoryBuilds,
        MemoryWebhooks,
    >;

    /// The key the sample requests of `events/` carry.
    pub(super) const SAMPLE_KEY: &str = "sk_test_REPLACEWITHYOURDEVKEY000000";

    pub(super) struct World {
        pub(super) api: TestApi,
        pub(super) queue: MemoryQueue,
        users: MemoryUsers,
        api_keys: MemoryApiKeys,
        counters: Arc<MemoryCounters>,
    }

    /// The api over in-memory ports, the sample key belonging to workspace `dev`.
    pub(super) fn world(scopes: &[Scope]) -> World {
        let keys = MemoryApiKeys::default();
        let record = ApiKeyRecord {
            key_id: "key-1".into(),
            workspace_id: "dev".into(),
            scopes: scopes.to_vec(),
            rate_limit: None,
            created_at: 0,
            revoked: false,
        };
        keys.records
            .lock()
            .unwrap()
            .insert(key_hash(SAMPLE_KEY), record);
        let (queue, users) = (MemoryQueue::default(), MemoryUsers::default());
        let counters = Arc::new(MemoryCounters::default());
        let limiter = Arc::new(RateLimiter::new(Arc::clone(&counters)));
        let api = Api {
            keys: KeyCache::new(keys.clone()),
            accept: Accept::new(MemoryKeys::default(), queue.clone(), Arc::clone(&limiter)),
            read: Read::new(users.clone(), Arc::clone(&limiter)),
            curate: Curate::new(
                MemoryAudiences::default(),
                users.clone(),
                MemoryBuilds::default(),
                MemoryKeys::default(),
                Arc::clone(&limiter),
            ),
            subscriptions: Subscriptions::new(
                MemoryWebhooks::default(),
                MemoryBuilds::default(),
                limiter,
            ),
            webhook_reach: Reach::Public,
            default_rate_limit: 100,
            metrics_namespace: "VibeFollow/test".into(),
        };
        World {
            api,
            queue,
            users,
            api_keys: keys,
            counters,
        }
    }

    /// A sample API Gateway event of `events/`, changed by `edit`, as Lambda hands it.
    pub(super) fn request(name: &str, edit: impl FnOnce(&mut Value)) -> Request {
        let mut event: Value = serde_json::from_str(&sample_text(name)).unwrap();
        edit(&mut event);
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    /// The sample POST sent to `path`, changed by `edit`.
    pub(super) fn sent_to(path: &str, edit: impl FnOnce(&mut Value)) -> Request {
        request("apigw-post-user.json", |event| {
            event["rawPath"] = json!(path);
            event["requestContext"]["http"]["path"] = json!(path);
            edit(event);
        })
    }

    /// The sample POST sent to `path` with `body`.
    pub(super) fn post(path: &str, body: String) -> Request {
        sent_to(path, |event| event["body"] = json!(body))
    }

    pub(super) async fn answer(api: &TestApi, request: Request) -> (StatusCode, Value, HeaderMap) {
        let response = api.handle(request).await;
        let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (response.status(), body, response.headers().clone())
    }

    #[tokio::test]
    async fn the_sample_post_is_accepted_for_the_keys_workspace_and_its_get_reads_it() {
        let w = world(&[Scope::UsersWrite, Scope::UsersRead]);
        let (status, body, _) = answer(&w.api, request("apigw-post-user.json", |_| {})).await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, json!({"data": {"accepted": true}}))
        );
        let sent = w.queue.messages();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (
                sent[0].workspace_id.as_str(),
                sent[0].external_user_id.as_str()
            ),
            ("dev", "usr_42")
        );
        // Applied as the consumer would: the sample GET reads it, without the email.
        let mut user = StoredUser::new("usr_42");
        user.profile.apply_message(&sent[0]);
        user.version = 1;
        let key = ("dev".to_owned(), "usr_42".to_owned());
        w.users.users.lock().unwrap().insert(key, user);
        let (status, body, _) = answer(&w.api, request("apigw-get-user.json", |_| {})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["external_user_id"], "usr_42");
        assert_eq!(body["data"]["traits"]["favoriteColor"], "teal");
        assert!(body["data"].get("email").is_none(), "{body}");
    }

    #[tokio::test]
    async fn refusals_come_in_the_contracts_envelope() {
        let w = world(&[Scope::UsersRead]);
        let anonymous = request("apigw-post-user.json", |event| {
            event["headers"]
                .as_object_mut()
                .unwrap()
                .remove("authorization");
        });
        let (status, body, headers) = answer(&w.api, anonymous).await;
        assert_eq!(
            (status, body["errors"][0]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("missing_authorization"))
        );
        assert!(headers.contains_key("www-authenticate"));
        let (status, body, _) = answer(&w.api, request("apigw-post-user.json", |_| {})).await;
        assert_eq!(
            (status, body["errors"][0]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("insufficient_scope"))
        );
        let (status, _, _) = answer(&w.api, post("/api/v1/nowhere", "{}".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(w.queue.messages().is_empty());
    }

    /// The sample request sent with `method` to `path`, with `body`.
    /// `method` on `target` (a path, and a query after `?`) with `body`.
    fn call(method: &str, target: &str, body: Value) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        sent_to(path, |event| {
            event["requestContext"]["http"]["method"] = json!(method);
            event["body"] = json!(body.to_string());
            event["rawQueryString"] = json!(query);
            let parameters: serde_json::Map<String, Value> = query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, value)| (name.to_owned(), json!(value)))
                .collect();
            event["queryStringParameters"] = Value::Object(parameters);
        })
    }

    #[tokio::test]
    async fn webhook_routes_show_the_secret_on_creation_and_rotation_only() {
        let w = world(&[Scope::WebhooksWrite, Scope::WebhooksRead]);
        let path = "/api/v1/webhooks/crm";
        let hook = json!({"url": "https://hooks.example.com/", "events": ["user.changed"]});
        let (status, created, _) = answer(&w.api, call("PUT", path, hook.clone())).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let secret = created["data"]["secret"].as_str().unwrap_or_default();
        assert!(secret.starts_with("whsec_"), "{created}");
        assert_eq!(created["data"]["include"], json!([]));
        let (status, replaced, _) = answer(&w.api, call("PUT", path, hook)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, read, _) = answer(&w.api, call("GET", path, Value::Null)).await;
        assert_eq!((status, &read), (StatusCode::OK, &replaced));
        assert!(read["data"].get("secret").is_none(), "{read}");
        let (status, listed, _) =
            answer(&w.api, call("GET", "/api/v1/webhooks", Value::Null)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed, json!({"data": [read["data"]], "next_cursor": null}));
        let log = "/api/v1/webhooks/crm/deliveries?limit=5";
        let (status, lines, _) = answer(&w.api, call("GET", log, Value::Null)).await;
        assert_eq!(
            (status, lines),
            (StatusCode::OK, json!({"data": [], "next_cursor": null}))
        );
        let refused = "/api/v1/webhooks/crm/deliveries?cursor=abc";
        let (status, bad, _) = answer(&w.api, call("GET", refused, Value::Null)).await;
        assert_eq!(
            (status, bad["errors"][0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("cursor"))
        );
        let replay = "/api/v1/webhooks/crm/replay";
        let since = json!({"since": crate::domain::format_millis(now_millis() - 60_000)});
        let (status, started, _) = answer(&w.api, call("POST", replay, since)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        assert!(started["data"]["replay_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("rpl_")));
        let (status, bad, _) = answer(&w.api, call("POST", replay, json!({}))).await;
        assert_eq!(
            (status, bad["errors"][0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("since"))
        );
        let rotate = "/api/v1/webhooks/crm/rotate-secret";
        let (status, rotated, _) = answer(&w.api, call("POST", rotate, Value::Null)).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(rotated["data"]["secret"].as_str(), Some(secret));
        assert!(rotated["data"]["previous_secret_expires_at"].is_string());
        let (status, deleted, _) = answer(&w.api, call("DELETE", path, Value::Null)).await;
        assert_eq!(
            (status, deleted),
            (StatusCode::ACCEPTED, json!({"data": {"accepted": true}}))
        );
        let (status, gone, _) = answer(&w.api, call("GET", path, Value::Null)).await;
        assert_eq!(
            (status, gone["errors"][0]["field"].as_str()),
            (StatusCode::NOT_FOUND, Some("webhook_id"))
        );
    }

    #[tokio::test]
    async fn webhook_refusals_name_their_field() {
        let w = world(&[Scope::WebhooksWrite]);
        let refused = |method, path, body| {
            let api = &w.api;
            async move {
                let (status, body, _) = answer(api, call(method, path, body)).await;
                let error = &body["errors"][0];
                (
                    status.as_u16(),
                    error["code"].clone(),
                    error["field"].clone(),
                )
            }
        };
        let profile = json!({"url": "https://hooks.example.com/", "events": ["user.changed"], "include": ["profile"]});
        assert_eq!(
            refused("PUT", "/api/v1/webhooks/crm", profile).await,
            (403, json!("insufficient_scope"), json!("include")),
            "a key without users:read_pii"
        );
        let hook = json!({"url": "https://hooks.example.com/", "events": ["user.changed"]});
        assert_eq!(
            refused("PUT", "/api/v1/webhooks/a%20b", hook).await,
            (422, json!("invalid_format"), json!("webhook_id"))
        );
        let private = json!({"url": "https://10.0.0.1/", "events": ["user.changed"]});
        assert_eq!(
            refused("PUT", "/api/v1/webhooks/crm", private).await,
            (422, json!("invalid_format"), json!("url"))
        );
        assert_eq!(
            refused("GET", "/api/v1/webhooks/crm", Value::Null).await,
            (403, json!("insufficient_scope"), json!("Authorization")),
            "reading takes webhooks:read"
        );
    }

    #[tokio::test]
    async fn a_key_store_or_rate_counter_that_fails_is_a_503_with_retry_after() {
        let w = world(&[Scope::UsersWrite]);
        w.api_keys
            .faults
            .fail("api_keys.get", crate::app::fakes::unavailable(), 1);
        let (status, _, headers) = answer(&w.api, request("apigw-post-user.json", |_| {})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
        w.counters
            .faults
            .fail("counters.take", crate::app::fakes::unavailable(), 10);
        let (status, _, headers) = answer(&w.api, request("apigw-post-user.json", |_| {})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
        assert!(w.queue.messages().is_empty(), "nothing accepted");
    }

    #[tokio::test]
    async fn a_request_answers_503_with_retry_after_before_the_invocations_deadline() {
        // At the margin already: a call that would still be running is dropped now.
        let near = SystemTime::now() + ANSWER_BEFORE_DEADLINE;
        let stalled = std::future::pending::<Result<(), ApiError>>();
        let answer = within_deadline(Some(near), stalled)
            .await
            .unwrap_err()
            .answer();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer
            .headers
            .iter()
            .any(|(name, _)| *name == "retry-after"));
        // Time left: the answer is the request's own.
        let far = SystemTime::now() + Duration::from_secs(600);
        assert!(within_deadline(Some(far), async { Ok::<_, ApiError>(7) })
            .await
            .is_ok());
        assert!(within_deadline(None, async { Ok::<_, ApiError>(7) })
            .await
            .is_ok());
    }
}
