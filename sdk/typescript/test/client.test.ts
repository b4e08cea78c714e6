// Retry and error behaviour against a stub server on loopback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { VibeFollow, VibeFollowError, batchesOf, retryAfterMs, upsertBody } from '@vibefollow/sdk';

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void;

async function stub(handlers: Handler[]) {
  const seen: { headers: IncomingMessage['headers']; body: string; url: string; method: string }[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      seen.push({ headers: req.headers, body, url: req.url ?? '', method: req.method ?? '' });
      const handler = handlers[Math.min(seen.length - 1, handlers.length - 1)];
      handler(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { baseUrl: `http://127.0.0.1:${port}`, seen, close: () => new Promise((r) => server.close(r)) };
}

const reply = (status: number, body: unknown, headers: Record<string, string> = {}): Handler =>
  (_req, _body, res) => {
    res.writeHead(status, { 'content-type': 'application/json', 'x-request-id': `req-${status}`, ...headers });
    res.end(JSON.stringify(body));
  };
const accepted = reply(202, { data: { accepted: true } });
const KEY = 'sk_test_000000000000000000000000';

test('email among the traits is sent as the top-level email; null passes through', () => {
  assert.deepEqual(upsertBody('usr_42', { email: 'jane@acme.io', name: 'Jane Doe', plan: null, color: 'teal' }), {
    external_user_id: 'usr_42',
    email: 'jane@acme.io',
    traits: { name: 'Jane Doe', plan: null, color: 'teal' },
  });
  assert.deepEqual(upsertBody('u', { email: null }), { external_user_id: 'u', email: null });
  assert.deepEqual(upsertBody('u', { signupDate: new Date('2026-05-17T14:00:00Z') }), {
    external_user_id: 'u',
    traits: { signupDate: '2026-05-17T14:00:00.000Z' },
  });
});

test('timestamp and setOnce travel as the body\'s timestamp and set_once', () => {
  assert.deepEqual(
    upsertBody('u', { plan: 'pro' }, { timestamp: new Date('2026-05-17T14:00:00Z'), setOnce: { firstPlan: 'trial' } }),
    {
      external_user_id: 'u',
      traits: { plan: 'pro' },
      set_once: { firstPlan: 'trial' },
      timestamp: '2026-05-17T14:00:00.000Z',
    },
  );
  assert.deepEqual(upsertBody('u', {}, { timestamp: '2026-05-17T16:00:00+02:00' }), {
    external_user_id: 'u',
    timestamp: '2026-05-17T16:00:00+02:00',
  });
});

test('retries on 503, 429 and 409 reuse one Idempotency-Key and honour Retry-After', async () => {
  const server = await stub([
    reply(503, { errors: [{ code: 'unavailable', message: 'x' }] }, { 'retry-after': '0' }),
    reply(429, { errors: [{ code: 'rate_limited', message: 'x' }] }, { 'retry-after': '0' }),
    reply(409, { errors: [{ code: 'idempotency_key_in_use', message: 'x' }] }, { 'retry-after': '0' }),
    accepted,
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 3 });
    await vf.users.identify('usr_42', { plan: 'trial' });
    assert.equal(server.seen.length, 4);
    const keys = new Set(server.seen.map((s) => s.headers['idempotency-key']));
    assert.equal(keys.size, 1);
    assert.match(String([...keys][0]), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(server.seen[0].headers.authorization, `Bearer ${KEY}`);
  } finally {
    await server.close();
  }
});

test('each identify call gets its own Idempotency-Key', async () => {
  const server = await stub([accepted]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    await vf.users.identify('a');
    await vf.users.identify('a');
    assert.notEqual(server.seen[0].headers['idempotency-key'], server.seen[1].headers['idempotency-key']);
  } finally {
    await server.close();
  }
});

test('4xx other than 409/429 is not retried and is a typed error', async () => {
  const server = await stub([
    reply(422, { errors: [{ code: 'invalid_email', field: 'email', message: 'email is not a valid address' }] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 5 });
    await assert.rejects(vf.users.identify('u', { email: 'nope' }), (err: unknown) => {
      assert.ok(err instanceof VibeFollowError);
      assert.equal(err.status, 422);
      assert.equal(err.code, 'invalid_email');
      assert.equal(err.field, 'email');
      assert.equal(err.requestId, 'req-422');
      return true;
    });
    assert.equal(server.seen.length, 1);
  } finally {
    await server.close();
  }
});

test('retries stop after maxRetries and report the last answer', async () => {
  const server = await stub([reply(503, { errors: [{ code: 'unavailable', message: 'down' }] }, { 'retry-after': '0' })]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 2 });
    await assert.rejects(vf.users.get('u'), (err: unknown) => err instanceof VibeFollowError && err.status === 503);
    assert.equal(server.seen.length, 3);
  } finally {
    await server.close();
  }
});

test('network errors and timeouts are retried, then reported with status 0', async () => {
  const server = await stub([
    (req) => req.socket.destroy(),
    (_req, _body, res) => setTimeout(() => accepted(_req, _body, res), 500),
    accepted,
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, timeoutMs: 100, maxRetries: 3 });
    await vf.users.identify('u');
    assert.equal(server.seen.length, 3);
    const dead = new VibeFollow({ apiKey: KEY, baseUrl: 'http://127.0.0.1:9', maxRetries: 1 });
    await assert.rejects(dead.users.get('u'), (err: unknown) => err instanceof VibeFollowError && err.status === 0);
  } finally {
    await server.close();
  }
});

test('get and findByEmail encode their arguments and unwrap data', async () => {
  const user = { external_user_id: 'usr/42', traits: {}, created_at: 'c', updated_at: 'u' };
  const server = await stub([
    reply(200, { data: user }),
    reply(200, { data: [user] }),
    reply(200, { data: [user], truncated: true }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    assert.deepEqual(await vf.users.get('usr/42'), user);
    assert.deepEqual(await vf.users.findByEmail('Jane+x@acme.io'), [user]);
    assert.deepEqual(await vf.users.findByEmailPage('a@b.io'), { users: [user], truncated: true });
    assert.equal(server.seen[0].url, '/api/v1/users/usr%2F42');
    assert.equal(server.seen[1].url, '/api/v1/users?email=Jane%2Bx%40acme.io');
  } finally {
    await server.close();
  }
});

test('Retry-After in seconds or as an HTTP-date, capped at a minute', () => {
  const now = Date.parse('2026-11-28T10:00:00Z');
  assert.equal(retryAfterMs('2', now), 2000);
  assert.equal(retryAfterMs('Sat, 28 Nov 2026 10:00:05 GMT', now), 5000);
  assert.equal(retryAfterMs('Sat, 28 Nov 2026 09:59:00 GMT', now), 0);
  assert.equal(retryAfterMs('86400', now), 60_000);
  assert.equal(retryAfterMs('soon', now), null);
  assert.equal(retryAfterMs(null, now), null);
});

test('delete sends DELETE with an Idempotency-Key its retries reuse', async () => {
  const server = await stub([
    reply(503, { errors: [{ code: 'unavailable', message: 'x' }] }, { 'retry-after': '0' }),
    (_req, _body, res) => {
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ data: { accepted: true } }));
    },
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    await vf.users.delete('usr/42');
    assert.equal(server.seen.length, 2);
    assert.equal(server.seen[1].url, '/api/v1/users/usr%2F42');
    assert.equal(server.seen[1].method, 'DELETE');
    const keys = server.seen.map((s) => s.headers['idempotency-key']);
    assert.ok(keys[0] && keys[0] === keys[1]);
  } finally {
    await server.close();
  }
});

test('batches hold at most 1,000 users and 512 KiB; an oversized entry travels alone', () => {
  const small = Array.from({ length: 2500 }, (_, i) => JSON.stringify({ external_user_id: `u${i}` }));
  assert.deepEqual(batchesOf(small).map((b) => b.length), [1000, 1000, 500]);
  const big = Array.from({ length: 40 }, () => 'x'.repeat(30 * 1024));
  const sizes = batchesOf(big).map((b) => b.length);
  assert.deepEqual(sizes, [17, 17, 6]);
  const huge = ['a', 'x'.repeat(600 * 1024), 'b'];
  assert.deepEqual(batchesOf(huge), [[0], [1], [2]]);
  assert.deepEqual(batchesOf([]), []);
});

test('identifyMany maps refused entries to the caller\'s indices; retries reuse each batch\'s key', async () => {
  const users = Array.from({ length: 1500 }, (_, i) => ({ externalUserId: `u${i}`, traits: { plan: 'pro' } }));
  const server = await stub([
    reply(207, { data: { accepted: 998, rejected: [{ index: 3, errors: [{ code: 'invalid_type', field: 'users[3].traits.plan', message: 'x' }] }, { index: 999, errors: [{ code: 'unavailable', field: 'users[999]', message: 'x' }] }] } }),
    reply(503, { errors: [{ code: 'unavailable', message: 'x' }] }, { 'retry-after': '0' }),
    reply(207, { data: { accepted: 499, rejected: [{ index: 7, errors: [{ code: 'unavailable', field: 'users[7]', message: 'x' }] }] } }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 2 });
    const result = await vf.users.identifyMany(users);
    assert.equal(result.accepted, 998 + 499);
    assert.deepEqual(result.rejected.map((r) => [r.index, r.errors[0].code]), [[3, 'invalid_type'], [999, 'unavailable'], [1007, 'unavailable']]);
    assert.equal(server.seen.length, 3);
    assert.ok(server.seen.every((s) => s.method === 'POST' && s.url === '/api/v1/users/batch'));
    const keys = server.seen.map((s) => s.headers['idempotency-key']);
    assert.notEqual(keys[0], keys[1]);
    assert.equal(keys[1], keys[2], 'a retried batch keeps its key');
    assert.equal(JSON.parse(server.seen[0].body).users.length, 1000);
    assert.deepEqual(JSON.parse(server.seen[2].body).users[0], { external_user_id: 'u1000', traits: { plan: 'pro' } });
  } finally {
    await server.close();
  }
});

const audience = {
  audience_id: 'trials',
  name: 'Trials at Acme',
  rule: { all: [{ field: 'plan', op: 'eq', value: 'trial' }, { field: 'email', op: 'ends_with', value: '@acme.io' }] },
  status: 'ready',
  updated_at: '2026-11-27T10:00:00.000Z',
};

test('audiences: each call\'s path and method; put sends { name, rule } with a Date as an ISO string', async () => {
  const server = await stub([
    reply(202, { data: { audience_id: 'trials', status: 'building' } }),
    reply(200, { data: { ...audience, members: 3 } }),
    reply(200, { data: [audience] }),
    accepted,
    reply(200, { data: [{ audience_id: 'trials', entered_at: '2026-11-27T10:00:01.000Z' }] }),
    reply(200, { data: [] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    const rule = {
      all: [
        { field: 'plan', op: 'in', value: ['trial', 'pro'] },
        { not: { field: 'address', path: ['city'], op: 'exists' } },
        { field: 'signupDate', op: 'gte', value: new Date('2026-05-17T14:00:00Z') },
        { field: 'lastSeen', op: 'within_last', value: 'P7D' },
      ],
    } as const;
    assert.deepEqual(await vf.audiences.put('trials', { name: 'Trials at Acme', rule }), { audience_id: 'trials', status: 'building' });
    assert.deepEqual(await vf.audiences.get('trials'), { ...audience, members: 3 });
    assert.deepEqual(await vf.audiences.list(), [audience]);
    assert.equal(await vf.audiences.delete('trials'), undefined);
    assert.deepEqual(await vf.users.audiences('usr_42'), [{ audience_id: 'trials', entered_at: '2026-11-27T10:00:01.000Z' }]);
    assert.deepEqual(await vf.users.audiences('usr_43'), []);
    assert.deepEqual(
      server.seen.map((s) => `${s.method} ${s.url}`),
      [
        'PUT /api/v1/audiences/trials',
        'GET /api/v1/audiences/trials',
        'GET /api/v1/audiences',
        'DELETE /api/v1/audiences/trials',
        'GET /api/v1/users/usr_42/audiences',
        'GET /api/v1/users/usr_43/audiences',
      ],
    );
    assert.equal(server.seen[0].headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(server.seen[0].body), {
      name: 'Trials at Acme',
      rule: { all: [rule.all[0], rule.all[1], { field: 'signupDate', op: 'gte', value: '2026-05-17T14:00:00.000Z' }, rule.all[3]] },
    });
    assert.ok(server.seen[3].headers['idempotency-key'], 'delete carries an Idempotency-Key');
    for (const read of [1, 2, 4, 5]) {
      assert.equal(server.seen[read].headers['idempotency-key'], undefined);
      assert.equal(server.seen[read].body, '');
    }
  } finally {
    await server.close();
  }
});

test('audiences.put: retries reuse one Idempotency-Key, each put has its own; 422 is not retried', async () => {
  const building = reply(202, { data: { audience_id: 'trials', status: 'building' } });
  const server = await stub([
    reply(503, { errors: [{ code: 'unavailable', message: 'x' }] }, { 'retry-after': '0' }),
    reply(409, { errors: [{ code: 'idempotency_key_in_use', message: 'x' }] }, { 'retry-after': '0' }),
    building,
    building,
    reply(422, { errors: [{ code: 'invalid_format', field: 'rule.op', message: 'unknown op' }] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 3 });
    const definition = { name: 'Trials', rule: { field: 'plan', op: 'eq', value: 'trial' } } as const;
    await vf.audiences.put('trials', definition);
    await vf.audiences.put('trials', definition);
    const keys = server.seen.map((s) => s.headers['idempotency-key']);
    assert.equal(server.seen.length, 4);
    assert.ok(server.seen.every((s) => s.method === 'PUT' && s.url === '/api/v1/audiences/trials'));
    assert.ok(keys[0] && keys[0] === keys[1] && keys[1] === keys[2], 'a retried put keeps its key');
    assert.match(String(keys[0]), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.notEqual(keys[3], keys[0], 'another put, another key');
    assert.ok(server.seen.every((s) => s.body === server.seen[0].body), 'a retry sends the same body');
    await assert.rejects(
      vf.audiences.put('trials', { name: 'Trials', rule: { field: 'plan', op: 'like' as 'eq', value: 'x' } }),
      (err: unknown) => err instanceof VibeFollowError && err.status === 422 && err.field === 'rule.op',
    );
    assert.equal(server.seen.length, 5);
  } finally {
    await server.close();
  }
});

test('audiences.members walks the pages: follows next_cursor across 3 pages, stops at null', async () => {
  const member = (id: string) => ({ external_user_id: id, entered_at: '2026-11-27T10:00:00.000Z' });
  const server = await stub([
    reply(200, { data: [member('u1'), member('u2')], next_cursor: 'c1' }),
    reply(200, { data: [member('u3'), member('u4')], next_cursor: 'c2/+= x' }),
    reply(200, { data: [member('u5')], next_cursor: null }),
    reply(500, { errors: [{ code: 'internal', message: 'no 4th page was asked for' }] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl, maxRetries: 0 });
    const iterator = vf.audiences.members('trials', { limit: 2 });
    assert.equal(server.seen.length, 0, 'nothing is requested before the loop starts');
    const seen: string[] = [];
    for await (const m of iterator) seen.push(m.external_user_id);
    assert.deepEqual(seen, ['u1', 'u2', 'u3', 'u4', 'u5']);
    assert.deepEqual(server.seen.map((s) => `${s.method} ${s.url}`), [
      'GET /api/v1/audiences/trials/members?limit=2',
      'GET /api/v1/audiences/trials/members?limit=2&cursor=c1',
      'GET /api/v1/audiences/trials/members?limit=2&cursor=c2%2F%2B%3D%20x',
    ]);
  } finally {
    await server.close();
  }
});

test('audiences.members: no limit by default, leaving the loop early stops the walk, errors reject it', async () => {
  const server = await stub([
    reply(200, { data: [{ external_user_id: 'u1', entered_at: 't' }, { external_user_id: 'u2', entered_at: 't' }], next_cursor: 'c1' }),
    reply(200, { data: [], next_cursor: null }),
    reply(404, { errors: [{ code: 'not_found', field: 'audience_id', message: 'no such audience' }] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    for await (const m of vf.audiences.members('trials')) {
      assert.equal(m.external_user_id, 'u1');
      break;
    }
    assert.deepEqual(server.seen.map((s) => s.url), ['/api/v1/audiences/trials/members']);
    assert.deepEqual(await vf.audiences.membersPage('trials', { cursor: 'c1' }), { members: [], nextCursor: null });
    assert.equal(server.seen[1].url, '/api/v1/audiences/trials/members?cursor=c1');
    await assert.rejects(
      (async () => {
        for await (const _ of vf.audiences.members('gone')) assert.fail('no member expected');
      })(),
      (err: unknown) => err instanceof VibeFollowError && err.status === 404 && err.field === 'audience_id',
    );
  } finally {
    await server.close();
  }
});

test('webhooks.deliveriesPage: a page of the attempt log and where the next starts', async () => {
  const line = {
    webhook_message_id: 'msg_1', type: 'user.changed', external_user_id: 'u1', sequence: 3, status: 'retrying',
    attempted_at: 't', http_status: 503, error: null, latency_ms: 40, next_attempt_at: 't2',
  };
  const server = await stub([reply(200, { data: [line], next_cursor: 'c/1' }), reply(200, { data: [], next_cursor: null })]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    assert.deepEqual(await vf.webhooks.deliveriesPage('crm', { limit: 1 }), { attempts: [line], nextCursor: 'c/1' });
    assert.deepEqual(await vf.webhooks.deliveriesPage('crm', { cursor: 'c/1' }), { attempts: [], nextCursor: null });
    assert.deepEqual(server.seen.map((s) => `${s.method} ${s.url}`), [
      'GET /api/v1/webhooks/crm/deliveries?limit=1',
      'GET /api/v1/webhooks/crm/deliveries?cursor=c%2F1',
    ]);
  } finally {
    await server.close();
  }
});

test('webhooks.replay: the range as RFC 3339, sent once', async () => {
  const server = await stub([reply(202, { data: { replay_id: 'rpl_1' } }), reply(503, { errors: [] })]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    const since = new Date('2027-01-15T08:00:00Z');
    assert.deepEqual(await vf.webhooks.replay('crm', { since, status: 'given_up' }), { replay_id: 'rpl_1' });
    await assert.rejects(vf.webhooks.replay('crm', { since: '2027-01-15T08:00:00Z', until: since }));
    assert.deepEqual(server.seen.map((s) => `${s.method} ${s.url}`), [
      'POST /api/v1/webhooks/crm/replay',
      'POST /api/v1/webhooks/crm/replay',
    ], 'a 503 is not retried');
    assert.deepEqual(JSON.parse(server.seen[0].body), { since: '2027-01-15T08:00:00.000Z', status: 'given_up' });
    assert.deepEqual(JSON.parse(server.seen[1].body), { since: '2027-01-15T08:00:00Z', until: '2027-01-15T08:00:00.000Z' });
  } finally {
    await server.close();
  }
});

test('audience and user ids are URL-encoded in every path', async () => {
  const server = await stub([
    reply(202, { data: { audience_id: 'x', status: 'building' } }),
    reply(200, { data: { ...audience, members: 0 } }),
    accepted,
    reply(200, { data: [], next_cursor: null }),
    reply(200, { data: [] }),
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    await vf.audiences.put('a/b c', { name: 'n', rule: { field: 'plan', op: 'exists' } });
    await vf.audiences.get('a/b?c');
    await vf.audiences.delete('a#b');
    for await (const _ of vf.audiences.members('a/../b')) assert.fail('no member expected');
    await vf.users.audiences('usr/42 ü');
    assert.deepEqual(server.seen.map((s) => s.url), [
      '/api/v1/audiences/a%2Fb%20c',
      '/api/v1/audiences/a%2Fb%3Fc',
      '/api/v1/audiences/a%23b',
      '/api/v1/audiences/a%2F..%2Fb/members',
      '/api/v1/users/usr%2F42%20%C3%BC/audiences',
    ]);
  } finally {
    await server.close();
  }
});

const webhook = {
  webhook_id: 'crm',
  url: 'https://hooks.acme.io/vibefollow',
  events: ['user.changed', 'audience.entered'],
  audiences: null,
  include: [],
  status: 'enabled',
  created_at: '2026-12-07T10:00:00.000Z',
  updated_at: '2026-12-07T10:00:00.000Z',
};

test('webhooks: each call\'s path, method and body; the secret only from put (new) and rotateSecret', async () => {
  const rotated = { ...webhook, secret: 'whsec_bmV3', previous_secret_expires_at: '2026-12-08T10:00:00.000Z' };
  const server = await stub([
    reply(201, { data: { ...webhook, secret: 'whsec_b2xk' } }),
    reply(200, { data: webhook }),
    reply(200, { data: [webhook], next_cursor: null }),
    reply(200, { data: rotated }),
    accepted,
  ]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    const definition = { url: webhook.url, events: ['user.changed', 'audience.entered'] as const, audiences: ['trials'] };
    assert.deepEqual(await vf.webhooks.put('crm', { ...definition, events: [...definition.events] }), { ...webhook, secret: 'whsec_b2xk' });
    assert.deepEqual(await vf.webhooks.get('crm'), webhook);
    assert.deepEqual(await vf.webhooks.list(), [webhook]);
    assert.deepEqual(await vf.webhooks.rotateSecret('crm'), rotated);
    assert.equal(await vf.webhooks.delete('crm'), undefined);
    assert.deepEqual(
      server.seen.map((s) => `${s.method} ${s.url}`),
      [
        'PUT /api/v1/webhooks/crm',
        'GET /api/v1/webhooks/crm',
        'GET /api/v1/webhooks',
        'POST /api/v1/webhooks/crm/rotate-secret',
        'DELETE /api/v1/webhooks/crm',
      ],
    );
    assert.deepEqual(JSON.parse(server.seen[0].body), { ...definition, events: [...definition.events] });
    assert.equal(server.seen[0].headers['content-type'], 'application/json');
  } finally {
    await server.close();
  }
});

test('webhooks.rotateSecret is never sent twice, unless refused by the rate limit first', async () => {
  const unavailable = reply(503, { errors: [{ code: 'unavailable', message: 'x' }] }, { 'retry-after': '0' });
  const limited = reply(429, { errors: [{ code: 'rate_limited', message: 'x' }] }, { 'retry-after': '0' });
  const rotated = reply(200, { data: { ...webhook, secret: 'whsec_bmV3', previous_secret_expires_at: '2026-12-08T10:00:00.000Z' } });
  const server = await stub([unavailable, limited, rotated]);
  try {
    const vf = new VibeFollow({ apiKey: KEY, baseUrl: server.baseUrl });
    await assert.rejects(vf.webhooks.rotateSecret('crm'), (err: VibeFollowError) => err.status === 503);
    assert.equal(server.seen.length, 1, 'a 503 may have rotated: not sent again');
    assert.equal((await vf.webhooks.rotateSecret('crm')).secret, 'whsec_bmV3');
    assert.equal(server.seen.length, 3, 'a 429 did nothing: sent again');
  } finally {
    await server.close();
  }
});
