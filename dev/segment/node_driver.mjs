#!/usr/bin/env node
// Drive the VibeFollow Segment-compatible API with a Node library that speaks Segment's
// protocol, unchanged: @segment/analytics-node (--library segment, the default) or
// RudderStack's @rudderstack/rudder-sdk-node (--library rudderstack).
//
//   (cd dev/segment && npm ci)     # once
//   node dev/segment/node_driver.mjs BASE_URL WRITE_KEY [RUN_ID] [--library segment|rudderstack] [--gzip|--no-gzip]
//
// (or SEGMENT_BASE_URL / SEGMENT_WRITE_KEY / SEGMENT_RUN_ID / SEGMENT_LIBRARY /
// SEGMENT_GZIP=1|0 in the environment; SEGMENT_PROXY_PORT, SEGMENT_DRIVER_TIMEOUT in
// seconds, default 90). Without --gzip/--no-gzip the library's own default applies
// (Segment's never compresses; RudderStack's compresses by default).
//
// The library is pointed at a small recording proxy that this script runs on
// 127.0.0.1 (first free port in 18081-18099, searched from 18090); the proxy
// forwards every request to BASE_URL unchanged and logs what the API answered.
// Three phases, one Analytics instance each:
//
//   a  identify of two users (email, createdAt, company {name}, custom trait), flush
//   b  one batch: identify of a third user, a track, an anonymous-only identify, flush
//   c  identify of a fourth user; the proxy forwards the first attempt to the API and
//      then answers 503 to the library, which retries the identical batch (same
//      messageIds; Segment's: X-Retry-Count: 1 after a 1-2 s backoff; RudderStack's:
//      no such header, after ~0.2 s) — so the API receives the same batch twice; flush
//
// RudderStack's library sends the first message of a new instance at once, on its
// own, so its phases go out as two batches: the first message, then the rest.
//
// Prints one JSON line: what was sent (user ids, message ids), every request the
// proxy saw with the API's status and the status handed to the library, and the
// library's name and version. Exit status: 0 all good; 1 the library reported a
// failed delivery or an error; 2 usage / setup error; 3 a phase did not have the
// shape it is meant to test (e.g. no retry happened); 4 the overall time limit ran out.

import http from 'node:http'
import zlib from 'node:zlib'
import { createRequire } from 'node:module'
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'

const require = createRequire(import.meta.url)
const PORTS = [...Array(19).keys()].map((i) => 18081 + ((i + 9) % 19)) // 18090..18099, then 18081..18089
const USAGE = 'usage: node_driver.mjs BASE_URL WRITE_KEY [RUN_ID] [--library segment|rudderstack] [--gzip|--no-gzip]'

function fail(code, message) {
  process.stderr.write(`node_driver: ${message}\n`)
  process.exit(code)
}

// What differs between the libraries that speak Segment's protocol; the phases, the
// proxy and the report are shared. `create` gets { writeKey, host, flushAt,
// flushInterval, gzip, onError }; `call` reports (err, { messageId, timestamp }) once
// the message's batch is delivered or given up; `close` flushes within `ms`.
const LIBRARIES = {
  segment: {
    family: 'segment',
    module: '@segment/analytics-node',
    name: '@segment/analytics-node', // its context.library.name
    gzip: false, // it cannot compress at all
    retryHeader: '1', // X-Retry-Count on the first retry
    batchesOf: (ids) => [ids],
    load: async () => (await import('@segment/analytics-node')).Analytics,
    create: (Analytics, o) => {
      if (o.gzip) fail(2, '@segment/analytics-node cannot gzip')
      const analytics = new Analytics({
        writeKey: o.writeKey,
        host: o.host,
        // one batch per phase: the publisher sends as soon as it holds every message
        flushAt: o.flushAt,
        flushInterval: o.flushInterval,
        maxRetries: 3,
        httpRequestTimeout: requestTimeoutMs,
        maxTotalBackoffDuration: 30,
        maxRateLimitDuration: 30,
      })
      // delivery failures also reach the per-call callbacks; keep the rest
      analytics.on('error', (e) => {
        if (e?.code !== 'delivery_failure') o.onError(`${e?.code}: ${e?.reason}`)
      })
      return analytics
    },
    call: (analytics, method, params, report) =>
      analytics[method](params, (err, ctx) => report(err, { messageId: ctx?.event?.messageId, timestamp: ctx?.event?.timestamp })),
    close: (analytics, ms) => analytics.closeAndFlush({ timeout: ms }),
  },
  // Sends identify traits as both traits and context.traits, gzips by default (with
  // Content-Type application/x-www-form-urlencoded), no X-Retry-Count (README.md).
  rudderstack: {
    family: 'rudderstack',
    module: '@rudderstack/rudder-sdk-node',
    name: 'analytics-node',
    gzip: true,
    retryHeader: null,
    // the first message of a new instance goes at once, alone; the rest wait for flushAt
    batchesOf: (ids) => (ids.length > 1 ? [ids.slice(0, 1), ids.slice(1)] : [ids]),
    load: async () => require('@rudderstack/rudder-sdk-node'),
    create: (Analytics, o) =>
      new Analytics(o.writeKey, {
        dataPlaneUrl: o.host,
        flushAt: o.flushAt,
        flushInterval: o.flushInterval,
        retryCount: 3,
        timeout: requestTimeoutMs,
        gzip: o.gzip,
        // 'info' (its default) logs with console.info, on stdout where the report goes
        logLevel: 'error',
      }),
    // Its callback gets the whole batch (a gzipped Buffer when gzip is on), not the
    // message: find the message in it.
    call: (analytics, method, params, report) =>
      analytics[method](params, (err, data) => {
        const m = batchOf(data).find(
          (m) => m?.type === method && (m.userId ?? null) === (params.userId ?? null) && (m.anonymousId ?? null) === (params.anonymousId ?? null)
        )
        report(err, { messageId: m?.messageId, timestamp: m?.timestamp ?? m?.originalTimestamp })
      }),
    // flush() has no timeout of its own
    close: (analytics, ms) => Promise.race([analytics.flush(), new Promise((r) => setTimeout(r, ms))]),
  },
}

function batchOf(data) {
  try {
    const body = Buffer.isBuffer(data) ? JSON.parse(zlib.gunzipSync(data).toString('utf8')) : JSON.parse(JSON.stringify(data))
    return Array.isArray(body?.batch) ? body.batch : []
  } catch {
    return []
  }
}

let args
try {
  args = parseArgs({
    args: process.argv.slice(2),
    options: { library: { type: 'string' }, gzip: { type: 'boolean' }, 'no-gzip': { type: 'boolean' } },
    allowPositionals: true,
  })
} catch (e) {
  fail(2, `${e.message}\n${USAGE}`)
}
const [argBase, argKey, argRun] = args.positionals
const baseUrl = (argBase ?? process.env.SEGMENT_BASE_URL ?? '').replace(/\/+$/, '')
const writeKey = argKey ?? process.env.SEGMENT_WRITE_KEY
const runId = (argRun ?? process.env.SEGMENT_RUN_ID ?? randomUUID().replace(/-/g, '').slice(0, 12)).toLowerCase()
const overallMs = Number(process.env.SEGMENT_DRIVER_TIMEOUT ?? 90) * 1000
const requestTimeoutMs = 10000
if (!baseUrl || !writeKey) fail(2, USAGE)
const family = args.values.library ?? (process.env.SEGMENT_LIBRARY || 'segment')
const lib = Object.hasOwn(LIBRARIES, family) ? LIBRARIES[family] : fail(2, `--library must be one of ${Object.keys(LIBRARIES).join(', ')}`)
const envGzip = { 1: true, 0: false }[process.env.SEGMENT_GZIP ?? '']
const gzip = args.values['no-gzip'] ? false : args.values.gzip ? true : envGzip ?? lib.gzip

let Analytics, pkg
try {
  Analytics = await lib.load()
  pkg = require(`${lib.module}/package.json`)
} catch (e) {
  fail(2, `${lib.module} is not installed (run npm ci in dev/segment): ${e.message}`)
}

// ---- recording proxy ---------------------------------------------------------------
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host', 'content-length'])
const rec = { phase: null, failAfterForward: 0, log: [] }

function readBatch(raw, encoding) {
  try {
    const data = (encoding ?? '').toLowerCase() === 'gzip' ? zlib.gunzipSync(raw) : raw
    const body = JSON.parse(data.toString('utf8'))
    return { ids: (body.batch ?? []).map((m) => m.messageId), jsonBytes: data.length, sentAt: body.sentAt ?? null }
  } catch {
    return { ids: null, jsonBytes: null, sentAt: null }
  }
}

async function handle(req, res) {
  const chunks = []
  for await (const c of req) chunks.push(c)
  const raw = Buffer.concat(chunks)
  const { ids, jsonBytes, sentAt } = readBatch(raw, req.headers['content-encoding'])
  const entry = {
    path: req.url,
    x_retry_count: req.headers['x-retry-count'] ?? null,
    content_type: req.headers['content-type'] ?? null,
    content_encoding: req.headers['content-encoding'] ?? null,
    authorization_scheme: (req.headers.authorization ?? '').split(' ')[0] || null,
    body_bytes: raw.length,
    json_bytes: jsonBytes,
    sent_at: sentAt,
    message_ids: ids,
  }
  const headers = {}
  for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v
  const t0 = performance.now()
  let status = null
  let body
  let retryAfter = null
  let contentType = 'application/json'
  try {
    const r = await fetch(baseUrl + req.url, {
      method: req.method,
      headers,
      body: raw,
      signal: AbortSignal.timeout(requestTimeoutMs),
    })
    status = r.status
    body = Buffer.from(await r.arrayBuffer())
    retryAfter = r.headers.get('retry-after')
    contentType = r.headers.get('content-type') ?? contentType
  } catch (e) {
    body = Buffer.from(JSON.stringify({ code: 'proxy_error', message: String(e?.cause?.message ?? e?.message ?? e) }))
  }
  entry.upstream_ms = Math.round((performance.now() - t0) * 10) / 10
  entry.upstream_status = status
  try {
    entry.upstream_body = body.length ? JSON.parse(body.toString('utf8')) : null
  } catch {
    entry.upstream_body = body.toString('utf8').slice(0, 2000)
  }
  if (retryAfter) entry.upstream_retry_after = retryAfter
  entry.phase = rec.phase
  // only a batch the API accepted is worth replaying
  const inject = status !== null && status >= 200 && status < 300 && rec.failAfterForward > 0
  if (inject) rec.failAfterForward--
  entry.seq = rec.log.length + 1
  rec.log.push(entry)
  let outStatus = status ?? 502
  let outHeaders = { 'content-type': contentType }
  if (retryAfter && !inject) outHeaders['retry-after'] = retryAfter
  if (inject) {
    outStatus = 503
    body = Buffer.from(JSON.stringify({ code: 'injected', message: '503 injected by driver proxy after forwarding' }))
    outHeaders = { 'content-type': 'application/json' }
  }
  entry.client_status = outStatus
  res.writeHead(outStatus, { ...outHeaders, 'content-length': body.length })
  res.end(body)
}

function listen(port) {
  return new Promise((resolve, reject) => {
    const srv = http.createServer((req, res) => {
      handle(req, res).catch((e) => {
        res.writeHead(500, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ code: 'proxy_bug', message: String(e) }))
      })
    })
    srv.once('error', reject)
    srv.listen(port, '127.0.0.1', () => resolve(srv))
  })
}

let server
let proxyPort
const wanted = process.env.SEGMENT_PROXY_PORT ? [Number(process.env.SEGMENT_PROXY_PORT)] : PORTS
for (const p of wanted) {
  try {
    server = await listen(p)
    proxyPort = p
    break
  } catch {}
}
if (!server) fail(2, `no free proxy port in ${wanted.join(',')}`)
const proxyUrl = `http://127.0.0.1:${proxyPort}`

// ---- phases ------------------------------------------------------------------------
const sent = {}
const errors = []
let timedOut = false
const deadline = Date.now() + overallMs
// Hard stop in case something below ignores its own bounds.
setTimeout(() => {
  process.stdout.write(
    JSON.stringify({ driver: 'node', run_id: runId, ok: false, exit_code: 4, errors: [...errors, { error: 'hard timeout' }], requests: rec.log, sent }) + '\n',
    () => process.exit(4)
  )
}, overallMs + 5000).unref()

const user = (n) => {
  const userId = `${runId}-node-${n}`
  return { userId, email: `${userId}@example.com` }
}
const traits = (n, email) => ({
  email,
  name: `Node Driver ${n}`,
  createdAt: new Date('2024-05-01T12:30:00Z'),
  company: { name: `Acme ${n}` },
  plan: 'pro',
})

async function runPhase(name, calls, failAfterForward = 0) {
  rec.phase = name
  rec.failAfterForward = failAfterForward
  const analytics = lib.create(Analytics, {
    writeKey,
    host: proxyUrl,
    flushAt: calls.length,
    flushInterval: 10000,
    gzip,
    onError: (error) => errors.push({ phase: name, error }),
  })
  const out = []
  const done = calls.map(
    ([method, params]) =>
      new Promise((resolve) => {
        const idx = out.length
        out.push({ type: method, userId: params.userId ?? null, anonymousId: params.anonymousId ?? null, event: params.event ?? null, email: params.traits?.email })
        try {
          lib.call(analytics, method, params, (err, { messageId, timestamp }) => {
            Object.assign(out[idx], { messageId: messageId ?? null, timestamp: timestamp ?? null })
            if (err) errors.push({ phase: name, error: String(err?.message ?? err), messageId: messageId ?? null })
            resolve(true)
          })
        } catch (e) {
          errors.push({ phase: name, error: `${e?.name}: ${e?.message}` })
          resolve(true)
        }
      })
  )
  sent[name] = out
  const left = Math.max(0, deadline - Date.now())
  await lib.close(analytics, left || 1)
  // closeAndFlush resolves on timeout too (and aborts); give the callbacks a moment to report
  const settled = await Promise.race([
    Promise.all(done).then(() => true),
    new Promise((r) => setTimeout(() => r(false), Math.min(2000, Math.max(0, deadline - Date.now())) || 1)),
  ])
  if (!settled || Date.now() >= deadline) {
    timedOut = true
    errors.push({ phase: name, error: 'delivery not acknowledged before the overall timeout' })
  }
}

try {
  const a1 = user('a1')
  const a2 = user('a2')
  await runPhase('a', [
    ['identify', { userId: a1.userId, traits: traits('a1', a1.email) }],
    ['identify', { userId: a2.userId, traits: traits('a2', a2.email) }],
  ])
  const b1 = user('b1')
  const anon = `${runId}-node-anon`
  if (!timedOut)
    await runPhase('b', [
      ['identify', { userId: b1.userId, traits: traits('b1', b1.email) }],
      ['track', { userId: b1.userId, event: 'Driver Batch Sent', properties: { run: runId } }],
      ['identify', { anonymousId: anon, traits: { email: `${anon}@example.com`, plan: 'free' } }],
    ])
  const c1 = user('c1')
  if (!timedOut) await runPhase('c', [['identify', { userId: c1.userId, traits: traits('c1', c1.email) }]], 1)
} catch (e) {
  errors.push({ error: `${e?.name}: ${e?.message}` })
}
server.close()
server.closeAllConnections?.()

// ---- did each phase have the shape it is meant to test? ------------------------------
// (the same checks as python_driver.py's phase_checks)
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b)
// the batches of a phase's requests, each run of identical resends (a retry) folded into one
const foldResends = (idLists) => idLists.filter((ids, i) => i === 0 || !same(ids, idLists[i - 1]))
const checks = {}
for (const [name, msgs] of Object.entries(sent)) {
  const want = lib.batchesOf(msgs.map((m) => m.messageId))
  const reqs = rec.log.filter((r) => r.phase === name).map((r) => r.message_ids)
  checks[`${name}_batched`] = reqs.length > 0 && same(foldResends(reqs), want)
}
const cReqs = rec.log.filter((r) => r.phase === 'c')
checks.c_retried_identical_batch =
  cReqs.length === 2 &&
  cReqs[0].client_status === 503 &&
  cReqs[1].x_retry_count === lib.retryHeader &&
  same(cReqs[0].message_ids, cReqs[1].message_ids)

const all = Object.values(sent).flat()
const code = timedOut ? 4 : errors.length ? 1 : Object.values(checks).every(Boolean) ? 0 : 3
const result = {
  driver: 'node',
  library: { family: lib.family, package: pkg.name, version: pkg.version, name: lib.name, node: process.version },
  run_id: runId,
  base_url: baseUrl,
  proxy: proxyUrl,
  gzip,
  user_ids: all.filter((m) => m.type === 'identify' && m.userId).map((m) => m.userId),
  anonymous_ids: all.filter((m) => m.anonymousId).map((m) => m.anonymousId),
  sent,
  message_ids: all.map((m) => m.messageId),
  requests: rec.log,
  statuses: rec.log.map((r) => r.client_status),
  upstream_statuses: rec.log.map((r) => r.upstream_status),
  errors,
  checks,
  ok: code === 0,
  exit_code: code,
}
process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code))
