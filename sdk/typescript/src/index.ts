/**
 * @vibefollow/sdk: a small client for the VibeFollow Users API.
 *
 *   const vf = new VibeFollow({ apiKey: process.env.VIBEFOLLOW_API_KEY! });
 *   await vf.users.identify('usr_42', { email: 'jane@acme.io', name: 'Jane Doe', plan: 'trial' });
 *   await vf.audiences.put('trials', { name: 'Trials', rule: { field: 'plan', op: 'eq', value: 'trial' } });
 *   for await (const member of vf.audiences.members('trials')) console.log(member.external_user_id);
 *
 * No runtime dependencies: Node 20's fetch and crypto.
 */
import { randomUUID } from 'node:crypto';

const DEFAULT_BASE_URL = 'https://api.vibefollow.com';
const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_RETRIES = 3;
const BACKOFF_BASE_MS = 200;
/** The longest wait a `Retry-After` can impose on one retry. */
const RETRY_AFTER_CAP_MS = 60_000;
const BACKOFF_CAP_MS = 10_000;

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** Known traits (`name`, `plan`, `signupDate`, `company`, `role`), `email`, or any custom trait. `null` removes. */
export interface Traits {
  email?: string | null;
  name?: string | null;
  plan?: string | null;
  signupDate?: string | Date | null;
  company?: string | null;
  role?: string | null;
  [custom: string]: JsonValue | Date | undefined;
}

export interface User {
  external_user_id: string;
  /** Present only for keys with the `users:read_pii` scope. */
  email?: string;
  traits: Record<string, JsonValue>;
  /** Custom traits that were not stored (over the profile budget, or too old). */
  rejected_traits?: { name: string; reason: 'profile_budget' | 'too_old'; accepted_at: string }[];
  created_at: string;
  updated_at: string;
}

/** The ops of an audience condition (docs/api.md#audiences). */
export type AudienceOp =
  | 'eq' | 'ne' | 'in' | 'not_in' | 'exists' | 'not_exists'
  | 'gt' | 'gte' | 'lt' | 'lte' | 'contains' | 'starts_with' | 'ends_with'
  | 'within_last' | 'not_within_last';

/**
 * One condition of an audience rule: `field` is `email` or a trait by its name (known or
 * custom); `path` reaches inside an object trait (`['address', 'city']`). A missing
 * field makes every op false but `not_exists`; a value of another type makes it false.
 */
export type AudienceCondition = { field: string; path?: readonly string[] } & (
  /** `email` ignores case; other strings compare exactly. `contains`: a substring, or an element of an array. */
  | { op: 'eq' | 'ne' | 'contains'; value: Exclude<JsonValue, null> }
  | { op: 'in' | 'not_in'; value: readonly JsonValue[] }
  | { op: 'exists' | 'not_exists' }
  /** Numbers with numbers; RFC 3339 date-times (or a Date) compared as instants. */
  | { op: 'gt' | 'gte' | 'lt' | 'lte'; value: number | string | Date }
  | { op: 'starts_with' | 'ends_with'; value: string }
  /** An ISO 8601 duration of days, hours, minutes, seconds (`P7D`, `PT12H`, `P1DT2H30M`), at most `P3650D`. */
  | { op: 'within_last' | 'not_within_last'; value: string }
);

/** An audience rule: groups around conditions. At most 50 conditions, nested at most 5 deep. */
export type AudienceRule =
  | { all: readonly AudienceRule[] }
  | { any: readonly AudienceRule[] }
  | { not: AudienceRule }
  | AudienceCondition;

/** `building` while a new or replaced rule is evaluated over every existing user, then `ready`. */
export type AudienceStatus = 'building' | 'ready';

/** What `audiences.put` sends: a name of 1–256 bytes and the rule. */
export interface AudienceDefinition {
  name: string;
  rule: AudienceRule;
}

/** An audience as `audiences.list()` shows it (no member count). */
export interface AudienceSummary {
  audience_id: string;
  name: string;
  rule: AudienceRule;
  status: AudienceStatus;
  updated_at: string;
}

/** An audience as `audiences.get()` shows it. */
export interface Audience extends AudienceSummary {
  /** Members now (while building: those found so far). */
  members: number;
  /** Only while building: how many users the build has looked at so far. */
  build?: { scanned: number };
}

/** What `audiences.put` resolves to: the definition is stored and its build started. */
export interface AudiencePutResult {
  audience_id: string;
  status: 'building';
}

/** One member of an audience, since `entered_at`. */
export interface AudienceMember {
  external_user_id: string;
  entered_at: string;
}

/** One audience a user is in, since `entered_at`. */
export interface UserAudience {
  audience_id: string;
  entered_at: string;
}

/** Options of `audiences.members` and `audiences.membersPage`. */
export interface AudienceMembersOptions {
  /** Members per page (per request), 1–1,000; default 100. */
  limit?: number;
  /** Start from this `nextCursor` of an earlier page instead of the first member. */
  cursor?: string;
}

export interface VibeFollowOptions {
  apiKey: string;
  /** Defaults to `VIBEFOLLOW_BASE_URL` from the environment, else the public API. */
  baseUrl?: string;
  /** Per attempt. Default 10 s. */
  timeoutMs?: number;
  /** Retries after the first attempt, on network errors, 409, 429 and 5xx. Default 3. */
  maxRetries?: number;
}

export interface ApiErrorDetail {
  code: string;
  field?: string;
  message: string;
}

/** Any failed call: an error answer of the API (`status` > 0) or a network failure (`status` 0). */
export class VibeFollowError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  readonly requestId: string | undefined;
  readonly errors: ApiErrorDetail[];

  constructor(status: number, errors: ApiErrorDetail[], requestId: string | undefined, options?: { cause?: unknown }) {
    const first = errors[0] ?? { code: 'unknown', message: `HTTP ${status}` };
    super(first.message, options);
    this.name = 'VibeFollowError';
    this.status = status;
    this.code = first.code;
    this.field = first.field;
    this.requestId = requestId;
    this.errors = errors;
  }
}

interface Attempt {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  body?: string;
  idempotencyKey?: string;
  /** Retried only after a 429 (refused before anything was done): a call that must not
   * happen twice and has no Idempotency-Key. */
  atMostOnce?: boolean;
}

function isRetryable(status: number): boolean {
  return status === 409 || status === 429 || status >= 500;
}

/** The wait a `Retry-After` asks for, in ms: delay-seconds or an HTTP-date (RFC 9110);
 * `null` when absent or unreadable. Capped, so a far date cannot park a caller. */
export function retryAfterMs(retryAfter: string | null, now: number = Date.now()): number | null {
  if (retryAfter === null || retryAfter.trim() === '') {
    return null;
  }
  const text = retryAfter.trim();
  const ms = /^\d+$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now;
  if (!Number.isFinite(ms)) {
    return null;
  }
  return Math.min(Math.max(ms, 0), RETRY_AFTER_CAP_MS);
}

function backoffMs(attempt: number, retryAfter: string | null): number {
  const asked = retryAfterMs(retryAfter);
  if (asked !== null) {
    return asked;
  }
  // Exponential backoff with full jitter.
  return Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a webhook endpoint subscribes to (docs/api.md#webhooks). */
export type WebhookEvent = 'user.changed' | 'user.deleted' | 'audience.entered' | 'audience.exited' | 'webhook.disabled';

/** What `webhooks.put` sends. */
export interface WebhookDefinition {
  /** https, no credentials, at most 2,048 bytes, never a private or metadata address. */
  url: string;
  events: WebhookEvent[];
  /** Only these audiences' events (at most 100); all of them when absent. */
  audiences?: string[];
  /** `['profile']`: bodies carry the user as a read shows it (the key needs `users:read_pii`). */
  include?: 'profile'[];
}

/** A webhook endpoint as `webhooks.get()` and `webhooks.list()` show it: never its secret. */
export interface Webhook {
  webhook_id: string;
  url: string;
  events: WebhookEvent[];
  audiences: string[] | null;
  include: 'profile'[];
  /** `disabled` after a 410 or 5 days with no 2xx; a `put` enables it again. */
  status: 'enabled' | 'disabled';
  /** While attempts fail: since when (no 2xx). */
  failing_since?: string;
  /** When disabled: `gone` (it answered 410) or `failing` (5 days with no 2xx). */
  disabled_reason?: 'gone' | 'failing';
  disabled_at?: string;
  created_at: string;
  updated_at: string;
}

/** What `webhooks.put` resolves to: `secret` only when the endpoint is new. */
export interface WebhookPutResult extends Webhook {
  secret?: string;
}

/** A line of an endpoint's attempt log (`webhooks.deliveriesPage`). */
export interface WebhookAttempt {
  /** The delivery's `webhook-id` header. */
  webhook_message_id: string;
  type: WebhookEvent | null;
  /** `null` for an endpoint's own event (`webhook.disabled`). */
  external_user_id: string | null;
  sequence: number;
  status: 'delivered' | 'retrying' | 'given_up';
  attempted_at: string;
  http_status: number | null;
  /** Why no answer came (`timeout`, `connect`, `address_refused`, `request`, `url`, `secret`), or `disabled`: given up unsent. */
  error: string | null;
  latency_ms: number | null;
  next_attempt_at: string | null;
}

/** What `webhooks.rotateSecret` resolves to: the new secret, and until when the previous one signs too. */
export interface WebhookRotated extends Webhook {
  secret: string;
  previous_secret_expires_at: string;
}

class Transport {
  private readonly apiKey: string;
  private readonly baseUrl: string;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;

  constructor(options: VibeFollowOptions) {
    if (!options?.apiKey) {
      throw new TypeError('VibeFollow: apiKey is required');
    }
    this.apiKey = options.apiKey;
    this.baseUrl = (options.baseUrl ?? process.env.VIBEFOLLOW_BASE_URL ?? DEFAULT_BASE_URL).replace(/\/+$/, '');
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
  }

  /** Sends with retries; every retry reuses the same Idempotency-Key. */
  async send<T>(request: Attempt): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await fetch(`${this.baseUrl}${request.path}`, {
          method: request.method,
          headers: this.headers(request),
          body: request.body,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (cause) {
        if (attempt < this.maxRetries && !request.atMostOnce) {
          await sleep(backoffMs(attempt, null));
          continue;
        }
        throw new VibeFollowError(0, [{ code: 'network_error', message: `request failed: ${String(cause)}` }], undefined, { cause });
      }
      if (response.ok) {
        return (await response.json()) as T;
      }
      const retryable = request.atMostOnce ? response.status === 429 : isRetryable(response.status);
      if (retryable && attempt < this.maxRetries) {
        await response.body?.cancel();
        await sleep(backoffMs(attempt, response.headers.get('retry-after')));
        continue;
      }
      throw await errorOf(response);
    }
  }

  private headers(request: Attempt): Record<string, string> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.apiKey}`, accept: 'application/json' };
    if (request.body !== undefined) {
      headers['content-type'] = 'application/json';
    }
    if (request.idempotencyKey) {
      headers['idempotency-key'] = request.idempotencyKey;
    }
    return headers;
  }
}

async function errorOf(response: Response): Promise<VibeFollowError> {
  const requestId = response.headers.get('x-request-id') ?? undefined;
  let errors: ApiErrorDetail[] = [];
  try {
    const body = (await response.json()) as { errors?: ApiErrorDetail[] };
    errors = Array.isArray(body?.errors) ? body.errors : [];
  } catch {
    // Not our envelope (a proxy's page, say): status alone tells.
  }
  return new VibeFollowError(response.status, errors, requestId);
}

/** Options of an upsert beyond its traits. */
export interface IdentifyOptions {
  /**
   * When the change happened at your source (a Date or an RFC 3339 string): it orders
   * this upsert instead of the time the API accepted it, so a backfill or a late sync
   * never overwrites newer data. From 2000-01-01 to 5 minutes ahead of the API's clock.
   */
  timestamp?: Date | string;
  /** Traits set only where the user has no value yet (first referrer, first plan…). */
  setOnce?: Traits;
}

function jsonTraits(traits: Traits): Record<string, JsonValue> {
  const out: Record<string, JsonValue> = {};
  for (const [name, value] of Object.entries(traits)) {
    if (value === undefined) continue;
    out[name] = value instanceof Date ? value.toISOString() : value;
  }
  return out;
}

/** The request body of an upsert: `email` among the traits goes to the top level. */
export function upsertBody(
  externalUserId: string,
  traits: Traits = {},
  options: IdentifyOptions = {},
): Record<string, JsonValue> {
  const { email, ...rest } = traits;
  const customAndKnown = jsonTraits(rest);
  const body: Record<string, JsonValue> = { external_user_id: externalUserId };
  if (email !== undefined) body.email = email;
  if (Object.keys(customAndKnown).length > 0) body.traits = customAndKnown;
  const once = jsonTraits(options.setOnce ?? {});
  if (Object.keys(once).length > 0) body.set_once = once;
  if (options.timestamp !== undefined) {
    body.timestamp = options.timestamp instanceof Date ? options.timestamp.toISOString() : options.timestamp;
  }
  return body;
}

/** One user of `identifyMany`. */
export interface UserUpsert extends IdentifyOptions {
  externalUserId: string;
  traits?: Traits;
}

/** What `identifyMany` did: `index` is the position in the array it was given. */
export interface IdentifyManyResult {
  accepted: number;
  rejected: { index: number; errors: ApiErrorDetail[] }[];
}

// The batch route's limits: entries per batch, and bytes of the whole body.
const BATCH_MAX_USERS = 1000;
const BATCH_MAX_BYTES = 512 * 1024;

/**
 * Splits upsert bodies into batches within the route's limits: each batch is a list of
 * indices into `bodies`. An entry too big for any batch travels alone, and the API
 * refuses just that one.
 */
export function batchesOf(bodies: string[]): number[][] {
  const envelope = Buffer.byteLength('{"users":[]}');
  const batches: number[][] = [];
  let current: number[] = [];
  let bytes = envelope;
  bodies.forEach((body, index) => {
    const size = Buffer.byteLength(body) + 1;
    if (current.length > 0 && (current.length === BATCH_MAX_USERS || bytes + size > BATCH_MAX_BYTES)) {
      batches.push(current);
      current = [];
      bytes = envelope;
    }
    current.push(index);
    bytes += size;
  });
  if (current.length > 0) batches.push(current);
  return batches;
}

class Users {
  constructor(private readonly transport: Transport) {}

  /**
   * Upserts many users through the batch route, 1,000 (or 512 KiB) at a time, one
   * batch after another. Each batch has its own Idempotency-Key, reused by its retries.
   * Entries the API refused are listed with their errors (code `unavailable`: send just
   * that one again); a whole batch refused (bad key, say) rejects the promise, with the
   * batches before it already accepted.
   */
  async identifyMany(users: UserUpsert[]): Promise<IdentifyManyResult> {
    const bodies = users.map((user) => JSON.stringify(upsertBody(user.externalUserId, user.traits, user)));
    const result: IdentifyManyResult = { accepted: 0, rejected: [] };
    for (const batch of batchesOf(bodies)) {
      const answer = await this.transport.send<{ data: { accepted: number; rejected?: { index: number; errors: ApiErrorDetail[] }[] } }>({
        method: 'POST',
        path: '/api/v1/users/batch',
        body: `{"users":[${batch.map((index) => bodies[index]).join(',')}]}`,
        idempotencyKey: randomUUID(),
      });
      result.accepted += answer.data.accepted;
      for (const refused of answer.data.rejected ?? []) {
        result.rejected.push({ index: batch[refused.index], errors: refused.errors });
      }
    }
    return result;
  }

  /**
   * Upserts a user. Resolves once the API accepted it (202); it is readable within a
   * few hundred ms. `options.timestamp`: when it happened at your source;
   * `options.setOnce`: traits set only where the user has none yet.
   */
  async identify(externalUserId: string, traits: Traits = {}, options: IdentifyOptions = {}): Promise<void> {
    await this.transport.send({
      method: 'POST',
      path: '/api/v1/users',
      body: JSON.stringify(upsertBody(externalUserId, traits, options)),
      idempotencyKey: randomUUID(),
    });
  }

  /** Reads one user; rejects with a 404 `VibeFollowError` if there is none. */
  async get(externalUserId: string): Promise<User> {
    const answer = await this.transport.send<{ data: User }>({
      method: 'GET',
      path: `/api/v1/users/${encodeURIComponent(externalUserId)}`,
    });
    return answer.data;
  }

  /**
   * Erases a user (needs the `users:delete` scope): email, traits and the email lookup
   * entry. Resolves once accepted (202), whether or not the user existed; upserts
   * accepted before it never bring data back, later ones create the user afresh.
   */
  async delete(externalUserId: string): Promise<void> {
    await this.transport.send({
      method: 'DELETE',
      path: `/api/v1/users/${encodeURIComponent(externalUserId)}`,
      idempotencyKey: randomUUID(),
    });
  }

  /** Users whose email matches, ignoring case (needs the `users:read_pii` scope). */
  async findByEmail(email: string): Promise<User[]> {
    return (await this.findByEmailPage(email)).users;
  }

  /**
   * The same, saying whether the answer was cut: at most 100 users (by
   * external_user_id) come back, `truncated` when more match.
   */
  async findByEmailPage(email: string): Promise<{ users: User[]; truncated: boolean }> {
    const answer = await this.transport.send<{ data: User[]; truncated?: boolean }>({
      method: 'GET',
      path: `/api/v1/users?email=${encodeURIComponent(email)}`,
    });
    return { users: answer.data, truncated: answer.truncated === true };
  }

  /** The audiences the user is in (needs `users:read`); `[]` for a user in none. */
  async audiences(externalUserId: string): Promise<UserAudience[]> {
    const answer = await this.transport.send<{ data: UserAudience[] }>({
      method: 'GET',
      path: `/api/v1/users/${encodeURIComponent(externalUserId)}/audiences`,
    });
    return answer.data;
  }
}

function audiencePath(audienceId: string): string {
  return `/api/v1/audiences/${encodeURIComponent(audienceId)}`;
}

/** Audiences (docs/api.md#audiences): named rules over users, their members kept live. */
class Audiences {
  constructor(private readonly transport: Transport) {}

  /**
   * Creates or replaces an audience (needs `audiences:write`). Resolves once the
   * definition is stored (202) with `status: 'building'`: the rule is then evaluated
   * over every existing user, `get` says `ready` when done. Each call gets an
   * Idempotency-Key that its retries reuse. A `Date` in a rule becomes an ISO string.
   */
  async put(audienceId: string, definition: AudienceDefinition): Promise<AudiencePutResult> {
    const answer = await this.transport.send<{ data: AudiencePutResult }>({
      method: 'PUT',
      path: audiencePath(audienceId),
      body: JSON.stringify({ name: definition.name, rule: definition.rule }),
      idempotencyKey: randomUUID(),
    });
    return answer.data;
  }

  /** Reads one audience with its member count; rejects with a 404 `VibeFollowError` if there is none. */
  async get(audienceId: string): Promise<Audience> {
    const answer = await this.transport.send<{ data: Audience }>({ method: 'GET', path: audiencePath(audienceId) });
    return answer.data;
  }

  /** Every audience of the workspace (at most 100), by audience id: the pages walked in turn. */
  async list(): Promise<AudienceSummary[]> {
    const audiences: AudienceSummary[] = [];
    let cursor: string | null = null;
    do {
      const search: string = cursor === null ? '' : `?cursor=${encodeURIComponent(cursor)}`;
      const answer: { data: AudienceSummary[]; next_cursor?: string | null } = await this.transport.send({
        method: 'GET',
        path: `/api/v1/audiences${search}`,
      });
      audiences.push(...answer.data);
      cursor = answer.next_cursor ?? null;
    } while (cursor !== null);
    return audiences;
  }

  /**
   * Deletes an audience and its memberships (needs `audiences:write`). Resolves once
   * accepted (202), whether or not it existed; its retries reuse one Idempotency-Key.
   */
  async delete(audienceId: string): Promise<void> {
    await this.transport.send({ method: 'DELETE', path: audiencePath(audienceId), idempotencyKey: randomUUID() });
  }

  /**
   * One page of members, by external_user_id: `nextCursor` is where the next page
   * starts, `null` after the last.
   */
  async membersPage(
    audienceId: string,
    options: AudienceMembersOptions = {},
  ): Promise<{ members: AudienceMember[]; nextCursor: string | null }> {
    const answer = await this.transport.send<{ data: AudienceMember[]; next_cursor: string | null }>({
      method: 'GET',
      path: `${audiencePath(audienceId)}/members${pageSearch(options)}`,
    });
    return { members: answer.data, nextCursor: answer.next_cursor ?? null };
  }

  /**
   * Every member, by external_user_id, page after page (`limit` members per request)
   * as the loop asks for them: `for await (const m of vf.audiences.members('trials'))`.
   * A member present for the whole walk is listed exactly once. Nothing is requested
   * until the loop starts; leaving it early stops the walk.
   */
  async *members(audienceId: string, options: AudienceMembersOptions = {}): AsyncGenerator<AudienceMember, void, undefined> {
    let cursor = options.cursor;
    for (;;) {
      const page = await this.membersPage(audienceId, { limit: options.limit, cursor });
      yield* page.members;
      if (page.nextCursor === null) return;
      cursor = page.nextCursor;
    }
  }
}

/** The query of a page's `limit` and `cursor`: `?limit=…&cursor=…`, or none. */
function pageSearch(options: { limit?: number; cursor?: string }): string {
  const query: string[] = [];
  if (options.limit !== undefined) query.push(`limit=${encodeURIComponent(options.limit)}`);
  if (options.cursor !== undefined) query.push(`cursor=${encodeURIComponent(options.cursor)}`);
  return query.length > 0 ? `?${query.join('&')}` : '';
}

function webhookPath(webhookId: string): string {
  return `/api/v1/webhooks/${encodeURIComponent(webhookId)}`;
}

/** Webhooks (docs/api.md#webhooks): the workspace's own endpoints, sent its events signed. */
class Webhooks {
  constructor(private readonly transport: Transport) {}

  /**
   * Subscribes an endpoint, or replaces its settings (needs `webhooks:write`). A new one
   * resolves with its `secret` (`whsec_…`), shown this once: keep it to verify
   * deliveries. A put whose first answer was lost and that was retried resolves without
   * it (the endpoint was created by the first attempt): call `rotateSecret` then.
   */
  async put(webhookId: string, definition: WebhookDefinition): Promise<WebhookPutResult> {
    const answer = await this.transport.send<{ data: WebhookPutResult }>({
      method: 'PUT',
      path: webhookPath(webhookId),
      body: JSON.stringify(definition),
    });
    return answer.data;
  }

  /** Reads one endpoint; rejects with a 404 `VibeFollowError` if there is none. */
  async get(webhookId: string): Promise<Webhook> {
    const answer = await this.transport.send<{ data: Webhook }>({ method: 'GET', path: webhookPath(webhookId) });
    return answer.data;
  }

  /** Every endpoint of the workspace (at most 20), by id. */
  async list(): Promise<Webhook[]> {
    const answer = await this.transport.send<{ data: Webhook[] }>({ method: 'GET', path: '/api/v1/webhooks' });
    return answer.data;
  }

  /** Unsubscribes an endpoint (needs `webhooks:write`); resolves whether or not it existed. */
  async delete(webhookId: string): Promise<void> {
    await this.transport.send({ method: 'DELETE', path: webhookPath(webhookId) });
  }

  /**
   * Gives an endpoint a new secret (needs `webhooks:write`); the previous one keeps
   * signing until `previous_secret_expires_at` (24 h). Never retried once sent: a
   * second rotation would drop the secret your receiver still uses.
   */
  async rotateSecret(webhookId: string): Promise<WebhookRotated> {
    const answer = await this.transport.send<{ data: WebhookRotated }>({
      method: 'POST',
      path: `${webhookPath(webhookId)}/rotate-secret`,
      atMostOnce: true,
    });
    return answer.data;
  }

  /**
   * One page of the endpoint's attempt log, newest first (30 days kept; needs
   * `webhooks:read`): `nextCursor` is where the next, older page starts, `null` after
   * the last.
   */
  async deliveriesPage(
    webhookId: string,
    options: { limit?: number; cursor?: string } = {},
  ): Promise<{ attempts: WebhookAttempt[]; nextCursor: string | null }> {
    const answer = await this.transport.send<{ data: WebhookAttempt[]; next_cursor: string | null }>({
      method: 'GET',
      path: `${webhookPath(webhookId)}/deliveries${pageSearch(options)}`,
    });
    return { attempts: answer.data, nextCursor: answer.next_cursor ?? null };
  }

  /**
   * Sends again every delivery whose last attempt started from `since` up to `until`
   * (now when absent), or only those `delivered` or `given_up` (needs `webhooks:write`).
   * Resolves with the replay's id once it started; the attempts show in
   * `deliveriesPage`. Never retried once sent: a second replay would send each delivery
   * once more (under the same `webhook-id`).
   */
  async replay(
    webhookId: string,
    range: { since: Date | string; until?: Date | string; status?: 'delivered' | 'given_up' },
  ): Promise<{ replay_id: string }> {
    const time = (at: Date | string | undefined) => (at instanceof Date ? at.toISOString() : at);
    const answer = await this.transport.send<{ data: { replay_id: string } }>({
      method: 'POST',
      path: `${webhookPath(webhookId)}/replay`,
      body: JSON.stringify({ since: time(range.since), until: time(range.until), status: range.status }),
      atMostOnce: true,
    });
    return answer.data;
  }
}

export class VibeFollow {
  readonly users: Users;
  readonly audiences: Audiences;
  readonly webhooks: Webhooks;

  constructor(options: VibeFollowOptions) {
    const transport = new Transport(options);
    this.users = new Users(transport);
    this.audiences = new Audiences(transport);
    this.webhooks = new Webhooks(transport);
  }
}
