#!/usr/bin/env node
// Drive the VibeFollow Segment-compatible API with @segment/analytics-node, unchanged.
//
//   (cd dev/segment && npm ci)     # once
//   node dev/segment/node_driver.mjs BASE_URL WRITE_KEY [RUN_ID]
//
// (or SEGMENT_BASE_URL / SEGMENT_WRITE_KEY / SEGMENT_RUN_ID in the environment;
// SEGMENT_PROXY_PORT, SEGMENT_DRIVER_TIMEOUT in seconds, default 90).
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
//      messageIds, X-Retry-Count: 1) after a 1-2 s backoff — so the API receives the
//      same batch twice; flush
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

const require = createRequire(import.meta.url)
const PORTS = [...Array(19).keys()].map((i) => 18081 + ((i + 9) % 19)) // 18090..18099, then 18081..18089

function fail(code, message) {
  process.stderr.write(`node_driver: ${message}\n`)
  process.exit(code)
}

const [argBase, argKey, argRun] = process.argv.slice(2)
const baseUrl = (argBase ?? process.env.SEGMENT_BASE_URL ?? '').replace(/\/+$/, '')
const writeKey = argKey ?? process.env.SEGMENT_WRITE_KEY
const runId = (argRun ?? process.env.SEGMENT_RUN_ID ?? randomUUID().replace(/-/g, '').slice(0, 12)).toLowerCase()
const overallMs = Number(process.env.SEGMENT_DRIVER_TIMEOUT ?? 90) * 1000
const requestTimeoutMs = 10000
if (!baseUrl || !writeKey) fail(2, 'usage: node_driver.mjs BASE_URL WRITE_KEY [RUN_ID]')

let Analytics, pkg
try {
  ;({ Analytics } = await import('@segment/analytics-node'))
  pkg = require('@segment/analytics-node/package.json')
} catch (e) {
  fail(2, `@segment/analytics-node is not installed (run npm ci in dev/segment): ${e.message}`)
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
  const analytics = new Analytics({
    writeKey,
    host: proxyUrl,
    // one batch per phase: the publisher sends as soon as it holds every message
    flushAt: calls.length,
    flushInterval: 10000,
    maxRetries: 3,
    httpRequestTimeout: requestTimeoutMs,
    maxTotalBackoffDuration: 30,
    maxRateLimitDuration: 30,
  })
  analytics.on('error', (e) => {
    // delivery failures also reach the per-call callbacks below; keep the rest
    if (e?.code !== 'delivery_failure') errors.push({ phase: name, error: `${e?.code}: ${e?.reason}` })
  })
  const out = []
  const done = calls.map(
    ([method, params]) =>
      new Promise((resolve) => {
        const idx = out.length
        out.push({ type: method, userId: params.userId ?? null, anonymousId: params.anonymousId ?? null, event: params.event ?? null, email: params.traits?.email })
        try {
          analytics[method](params, (err, ctx) => {
            Object.assign(out[idx], { messageId: ctx?.event?.messageId ?? null, timestamp: ctx?.event?.timestamp ?? null })
            if (err) errors.push({ phase: name, error: String(err?.message ?? err), messageId: ctx?.event?.messageId ?? null })
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
  await analytics.closeAndFlush({ timeout: left || 1 })
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
const checks = {}
for (const [name, msgs] of Object.entries(sent)) {
  const want = JSON.stringify(msgs.map((m) => m.messageId))
  const reqs = rec.log.filter((r) => r.phase === name)
  checks[`${name}_one_batch`] = reqs.length > 0 && reqs.every((r) => JSON.stringify(r.message_ids) === want)
}
const cReqs = rec.log.filter((r) => r.phase === 'c')
checks.c_retried_identical_batch =
  cReqs.length === 2 &&
  cReqs[0].client_status === 503 &&
  cReqs[1].x_retry_count === '1' &&
  JSON.stringify(cReqs[0].message_ids) === JSON.stringify(cReqs[1].message_ids)

const all = Object.values(sent).flat()
const code = timedOut ? 4 : errors.length ? 1 : Object.values(checks).every(Boolean) ? 0 : 3
const result = {
  driver: 'node',
  library: { package: pkg.name, version: pkg.version, name: '@segment/analytics-node', node: process.version },
  run_id: runId,
  base_url: baseUrl,
  proxy: proxyUrl,
  gzip: false,
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
