//! Helpers for the stack tests: they talk to the local stack (`dev/stack.py run` sets
//! the environment) over HTTP and to the emulator through the same adapters the
//! functions use. Each test works in a workspace of its own, so tests run in parallel.

use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};
use vibefollow_users::app::ports::{StoredUser, Users};
use vibefollow_users::aws::dynamodb::ApiKeyStore;
use vibefollow_users::aws::dynamodb::{
    AudienceStore, IdempotencyStore, RateLimitStore, UserStore, PARTITION_KEY,
};
use vibefollow_users::aws_sdk_eventbridge;
use vibefollow_users::config::Resources;
use vibefollow_users::domain::auth::{generate_key, key_hash, key_id, ApiKeyRecord, Scope};
use vibefollow_users::domain::{Changes, Stamp, UpsertMessage, MESSAGE_VERSION};

pub const ALL_SCOPES: [Scope; 9] = Scope::ALL;

pub struct Stack {
    pub api: String,
    pub http: reqwest::Client,
    pub resources: Resources,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub workspace: String,
    _turn: Turn,
}

/// Every stack test runs in one binary, many at once, each in a workspace of its own.
/// What a workspace cannot isolate — the proxy's faults and call counters, which
/// instance of the fleet answers — a test gets to itself: it takes the turn alone,
/// and waits until the others let go (they share it).
static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held for the test's life; dropping it lets the next test in.
#[allow(dead_code)]
enum Turn {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
    /// Within the turn another `Stack` of the same test holds (taking a second one
    /// could wait forever behind a test queued for its turn alone).
    Within,
}

impl Stack {
    /// Connects to the running stack, in a fresh workspace, beside other tests.
    pub async fn new() -> Self {
        Self::connect(Turn::Shared(TURNS.read().await)).await
    }

    /// As `new`, for a test that sets faults, counts AWS calls or depends on which
    /// instance answers: no other test runs meanwhile.
    pub async fn alone() -> Self {
        Self::connect(Turn::Alone(TURNS.write().await)).await
    }

    /// The same stack in another fresh workspace, within this test's turn.
    pub async fn other_workspace(&self) -> Self {
        Self::connect(Turn::Within).await
    }

    async fn connect(turn: Turn) -> Self {
        let resources =
            Resources::from_env().expect("run the integration tests through `make test`");
        let sdk = vibefollow_users::aws::sdk_config().await;
        Self {
            _turn: turn,
            api: std::env::var("VF_API_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".into()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            resources,
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            workspace: format!("t{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn users(&self) -> UserStore {
        UserStore::new(self.dynamodb.clone(), &self.resources.users_table)
    }

    pub fn audiences(&self) -> AudienceStore {
        AudienceStore::new(
            self.dynamodb.clone(),
            &self.resources.audiences_table,
            &self.resources.audience_members_table,
        )
    }

    pub fn idempotency(&self) -> IdempotencyStore {
        IdempotencyStore::new(self.dynamodb.clone(), &self.resources.idempotency_table)
    }

    pub fn rate_limits(&self) -> RateLimitStore {
        RateLimitStore::new(self.dynamodb.clone(), &self.resources.rate_limits_table)
    }

    /// Marks the key with this hash revoked, as `vfctl keys revoke` does.
    pub async fn revoke(&self, hash: &str) {
        self.dynamodb
            .update_item()
            .table_name(&self.resources.api_keys_table)
            .key(
                PARTITION_KEY,
                aws_sdk_dynamodb::types::AttributeValue::S(hash.into()),
            )
            .update_expression("SET revoked = :t")
            .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
            .send()
            .await
            .expect("revoke key");
    }

    /// A new key of this test's workspace.
    pub async fn key(&self, scopes: &[Scope]) -> String {
        self.key_with_rate(scopes, 1000).await
    }

    pub async fn key_with_rate(&self, scopes: &[Scope], rate_limit: u32) -> String {
        self.key_in(&self.workspace, scopes, rate_limit).await
    }

    pub async fn key_in(&self, workspace: &str, scopes: &[Scope], rate_limit: u32) -> String {
        let key = generate_key(true);
        let hash = key_hash(&key);
        let record = ApiKeyRecord {
            key_id: key_id(&hash),
            workspace_id: workspace.to_owned(),
            scopes: scopes.to_vec(),
            rate_limit: Some(rate_limit),
            created_at: 0,
            revoked: false,
        };
        ApiKeyStore::new(self.dynamodb.clone(), &self.resources.api_keys_table)
            .put(&hash, &record)
            .await
            .expect("create key");
        key
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.api));
        match key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    pub async fn post(&self, key: &str, body: &Value) -> Response {
        self.post_raw(key, body.to_string(), None).await
    }

    /// Posts an upsert that must be accepted (202).
    pub async fn accept(&self, key: &str, body: &Value) {
        let response = self.post(key, body).await;
        assert_eq!(response.status(), 202, "{body} was not accepted");
    }

    pub async fn post_raw(
        &self,
        key: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> Response {
        let mut request = self
            .request(Method::POST, "/api/v1/users", Some(key))
            .header("content-type", "application/json")
            .body(body);
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("idempotency-key", idempotency_key);
        }
        request.send().await.expect("POST")
    }

    pub async fn get_user(&self, key: &str, id: &str) -> Response {
        let path = format!("/api/v1/users/{}", percent_encode(id));
        self.request(Method::GET, &path, Some(key))
            .send()
            .await
            .expect("GET")
    }

    /// `GET /api/v1/users?email=…`, the lookup by email.
    pub async fn find_by_email(&self, key: &str, email: &str) -> Response {
        self.request(Method::GET, "/api/v1/users", Some(key))
            .query(&[("email", email)])
            .send()
            .await
            .expect("GET by email")
    }

    /// The `{"data", "truncated"?}` of a lookup by email.
    pub async fn users_with_email(&self, key: &str, email: &str) -> Value {
        self.find_by_email(key, email)
            .await
            .json()
            .await
            .expect("JSON")
    }

    /// The users table's item of a user of this workspace as DynamoDB holds it
    /// (consistent read), to look at its attributes.
    pub async fn user_item(
        &self,
        id: &str,
    ) -> Option<
        std::collections::HashMap<
            String,
            vibefollow_users::aws_sdk_dynamodb::types::AttributeValue,
        >,
    > {
        self.dynamodb
            .get_item()
            .table_name(&self.resources.users_table)
            .key(
                "pk",
                vibefollow_users::aws_sdk_dynamodb::types::AttributeValue::S(format!(
                    "{}#{id}",
                    self.workspace
                )),
            )
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem on the users table")
            .item
    }

    /// The stored item of a user of this workspace, stamps and all.
    pub async fn stored(&self, id: &str) -> Option<StoredUser> {
        self.users()
            .get(&self.workspace, id)
            .await
            .expect("read user")
    }
}

pub fn percent_encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Polls `probe` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` until it returns `Some`, as long as the consumer keeps working: an
/// import of thousands of users takes what it takes on a slow machine. Fails (naming
/// `what`) once the consumer has made no progress for `STALL`, or after `MOST` in all.
pub async fn until_consumed<T, F, Fut>(stack: &Stack, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_working(stack, &["consumer"], what, probe).await
}

/// As `until_consumed`, with the progress of these functions of the stack.
pub async fn until_working<T, F, Fut>(
    stack: &Stack,
    functions: &[&str],
    what: &str,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    const STALL: Duration = Duration::from_secs(20);
    const MOST: Duration = Duration::from_secs(600);
    let started = Instant::now();
    let mut progress = (invocations(stack, functions).await, Instant::now());
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        let invocations = invocations(stack, functions).await;
        if invocations != progress.0 {
            progress = (invocations, Instant::now());
        }
        assert!(
            progress.1.elapsed() < STALL && started.elapsed() < MOST,
            "{what}: not so after {functions:?} made no progress for {:.0?} ({:.0?} in all)",
            progress.1.elapsed(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `data` of `GET /api/v1/users/{id}` once it satisfies `done` (see
/// `until_consumed` for how long it waits).
pub async fn user_when(stack: &Stack, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    until_consumed(
        stack,
        &format!("user {id} in the expected state"),
        || async {
            let response = stack.get_user(key, id).await;
            if response.status() != 200 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            done(&body["data"]).then(|| body["data"].clone())
        },
    )
    .await
}

/// Waits until the upsert queue holds nothing, visible or in flight: everything
/// enqueued so far was applied (or failed for good). A test that relies on it takes its
/// turn alone, or other tests keep the queue busy.
pub async fn queue_drained(stack: &Stack) {
    use aws_sdk_sqs::types::QueueAttributeName;
    until_consumed(stack, "the upsert queue drained", || async {
        let depth = stack
            .sqs
            .get_queue_attributes()
            .queue_url(&stack.resources.upsert_queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .ok()?;
        depth.attributes()?.values().all(|v| v == "0").then_some(())
    })
    .await;
}

/// Messages in the DLQ whose body holds `marker`, looked at without taking them.
pub async fn dead_letters_with(stack: &Stack, marker: &str) -> usize {
    let dlq = std::env::var("DLQ_URL").expect("DLQ_URL from the local stack");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive from the DLQ");
        seen.extend(
            out.messages()
                .iter()
                .filter(|m| m.body().is_some_and(|b| b.contains(marker)))
                .filter_map(|m| m.message_id().map(str::to_owned)),
        );
    }
    seen.len()
}

/// Invocations of these functions so far, as the Lambda-faithful runtime counts them.
pub async fn invocations(stack: &Stack, functions: &[&str]) -> u64 {
    let report = fleet(stack, Method::GET, "", None).await;
    functions
        .iter()
        .map(|f| report["functions"][f]["invocations"].as_u64().unwrap_or(0))
        .sum()
}

/// `(status, errors[].code, errors[].field)` of an error answer.
pub async fn error_of(response: Response) -> (u16, Vec<String>, Vec<String>) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    let errors = body["errors"].as_array().expect("error envelope").clone();
    let codes = errors
        .iter()
        .map(|e| e["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    let fields = errors
        .iter()
        .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
        .collect();
    (status, codes, fields)
}

/// An accepted upsert as the api would enqueue it, stamped `at` with request id `req-{i}`.
pub fn message(workspace: &str, user: &str, at: i64, i: usize, changes: Changes) -> UpsertMessage {
    UpsertMessage {
        version: MESSAGE_VERSION,
        workspace_id: workspace.to_owned(),
        external_user_id: user.to_owned(),
        stamp: Stamp::new(at, format!("req-{i:03}")),
        changes,
        erase: false,
    }
}

/// Puts raw message bodies on the upsert queue, ten per call.
pub async fn send_all(stack: &Stack, bodies: &[String]) {
    for chunk in bodies.chunks(10) {
        let mut batch = stack
            .sqs
            .send_message_batch()
            .queue_url(&stack.resources.upsert_queue_url);
        for (i, body) in chunk.iter().enumerate() {
            let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
                .unwrap();
            batch = batch.entries(entry);
        }
        let out = batch.send().await.unwrap();
        assert!(out.failed().is_empty());
    }
}

/// A control call to the Lambda-faithful runtime the stack runs the functions under
/// (`dev/faithful`): `GET /__fleet` for its counters, `POST /__fleet/scale` etc.
pub async fn fleet(stack: &Stack, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = stack
        .http
        .request(method, format!("{}/__fleet{path}", stack.api));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the faithful runtime answers");
    assert!(
        response.status().is_success(),
        "fleet {path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

/// The stack's proxy's report: the calls per operation, the faults injected.
pub async fn fault_report(stack: &Stack) -> Value {
    let url = std::env::var("VF_FAULT_PROXY_URL").expect("run through `make test`");
    stack
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// How many calls of an AWS operation (`AmazonSQS.SendMessage`) went through the
/// stack's proxy so far.
pub async fn aws_calls(stack: &Stack, operation: &str) -> u64 {
    fault_report(stack).await["calls"][operation]
        .as_u64()
        .unwrap_or(0)
}

/// Calls of an SQS `operation` that named the upsert queue: the api's sends, without
/// what the tick or the stream send to other queues meanwhile.
pub async fn upsert_queue_calls(stack: &Stack, operation: &str) -> u64 {
    let queue = &stack.resources.upsert_queue_url;
    aws_calls(stack, &format!("{operation} {queue}")).await
}

/// The instance of the faithful runtime that answered.
pub fn instance_of(response: &Response) -> String {
    response
        .headers()
        .get("x-faithful-instance")
        .and_then(|v| v.to_str().ok())
        .expect("answered through the faithful runtime")
        .to_owned()
}

/// Invokes a function of the stack directly, as an event source mapping would.
pub async fn fleet_invoke(stack: &Stack, function: &str, event: &Value) -> Value {
    let url = format!("{}/2015-03-31/functions/{function}/invocations", stack.api);
    let response = stack
        .http
        .post(url)
        .json(event)
        .send()
        .await
        .expect("invoke");
    assert!(
        response.status().is_success(),
        "invoke {function}: {}",
        response.status()
    );
    response.json().await.expect("a JSON answer")
}

/// Tells the stack's fault proxy which AWS calls to fail or stall (see
/// `dev/stack/proxy.py`); it holds until `clear_faults`.
pub async fn set_faults(stack: &Stack, faults: &Value) {
    let url = std::env::var("VF_FAULT_PROXY_URL").expect("run through `make test`");
    let status = stack
        .http
        .put(url)
        .json(faults)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

pub async fn clear_faults(stack: &Stack) {
    let url = std::env::var("VF_FAULT_PROXY_URL").expect("run through `make test`");
    assert_eq!(stack.http.delete(url).send().await.unwrap().status(), 204);
}

/// `vfctl`, as built beside this test binary (`make test` builds every binary of the
/// workspace first).
pub fn vfctl() -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/stack-… → target/<profile>/vfctl
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("vfctl"))
        .filter(|path| path.exists())
        .expect("vfctl is not built: run `cargo build -p vfctl` (make test does)");
    std::process::Command::new(binary)
}

/// `vfctl --local <args>`, which must succeed, and the JSON it prints.
pub fn vfctl_json(args: &[&str]) -> Value {
    let output = vfctl()
        .arg("--local")
        .args(args)
        .output()
        .expect("run vfctl");
    assert!(
        output.status.success(),
        "vfctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// The events of one workspace, as a downstream view would subscribe to them.
pub struct Subscription {
    queue_url: String,
}

impl Subscription {
    /// Events of `source` (`vibefollow.users`, `vibefollow.audiences`) for this
    /// stack's workspace.
    pub async fn new(stack: &Stack, source: &str) -> Self {
        let bus = std::env::var("EVENT_BUS_NAME").expect("EVENT_BUS_NAME from the local stack");
        let name = format!("events-{}-{}", source.replace('.', "-"), stack.workspace);
        let queue_url = stack
            .sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let events = aws_sdk_eventbridge::Client::new(&vibefollow_users::aws::sdk_config().await);
        let pattern = json!({"source": [source], "detail": {"workspace_id": [stack.workspace]}});
        events
            .put_rule()
            .name(&name)
            .event_bus_name(&bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap();
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("test")
            .arn(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
            .build()
            .unwrap();
        events
            .put_targets()
            .rule(&name)
            .event_bus_name(&bus)
            .targets(target)
            .send()
            .await
            .unwrap();
        Self { queue_url }
    }

    /// Envelopes received so far, once `done` holds for all received (up to 90 s: other
    /// test binaries' writes can be ahead of these in the stream).
    pub async fn until(
        &self,
        stack: &Stack,
        received: &mut Vec<Value>,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !done(received) {
            assert!(
                std::time::Instant::now() < deadline,
                "events did not arrive: {received:#?}"
            );
            let out = stack
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for m in out.messages() {
                received.push(serde_json::from_str(m.body().unwrap()).unwrap());
                stack
                    .sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}
