"""The drill's report: target/drill/summary.json and docs/reliability.md."""
import json

from .chaos import FAULTS
from .settings import DELETE_SHARE, ECHO_SHARE, OUT, REPORT


def webhook_row(hooks):
    steady, flaky, gone = hooks["steady"], hooks["flaky"], hooks["gone"]
    return (f"{hooks['events_expected']} events to deliver ({hooks['events_unmarked']} unmarked); "
            f"steady: {steady['delivered']} delivered, {steady['repeats']} repeats, {steady['missing']} missing; "
            f"flaky: {flaky['delivered']} delivered in {flaky['attempts']} attempts "
            f"({flaky['refused_or_timed_out']} refused or timed out), {flaky['repeats']} repeats, "
            f"{flaky['missing']} missing; out of lane order: {steady['out_of_sequence'] + flaky['out_of_sequence']}; "
            f"late (a newer version of the user sent first): {steady['late']} + {flaky['late']}; "
            f"gone: {gone['status']} ({gone['disabled_reason']}) after {gone['attempts']} attempts, "
            f"{gone['attempts_started_after_disabled']} attempts after; dead-lettered: "
            f"{hooks['dead_lettered']['intake']} events, {hooks['dead_lettered']['wakes']} wakes")


def write_report(summary):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    req, out, faults, cfg = summary["requests"], summary["outcome"], summary["faults"], summary["config"]
    inst = summary["instances"]
    causes = ", ".join(f"{v} × {k}" for k, v in req["retry_causes"].items() if v)
    repeat_causes = ", ".join(f"{v} × {k}" for k, v in req["repeat_retry_causes"].items() if v)
    server_errors = ", ".join(f"{v} × {k}" for k, v in req["server_errors"].items())
    rows = "\n".join(f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in summary["checks"].items())
    windows = "\n".join(f"- {what} ({seconds} s)" for what, _, seconds in FAULTS)
    REPORT.write_text(f"""# Reliability

Written by `make drill` (`dev/drill.py`): {cfg['clients']} clients × {cfg['upserts_per_client']} upserts
over {cfg['users']} shared users against the local stack, with faults; seed {cfg['seed']}. Rerun it
to regenerate this page (figures vary a little from run to run with timing).

## Figures

| | |
|---|---|
| requests sent | {req['upserts']}, of which {req['erasures']} erasures (HTTP attempts: {req['http_attempts']}) |
| accepted (202) | {req['accepted']} ({req['answered_replayed']} answered as replays) |
| lost | {out['lost']} |
| applied twice in effect (stale or foreign stamps) | {out['stale_or_duplicated_fields'] + out['fields_with_foreign_stamps']} of {out['fields_checked']} stored fields |
| upserts that needed retries | {req['retried_upserts']} ({causes}) |
| 5xx answers (requests, repeats, probes), by who answered | {server_errors or 'none'}; 500s not from an instance the drill killed: {req['unexplained_500s']} |
| refused probes (422/401/403/415/413) | {req['probes']}, none stored |
| fault windows | {faults['windows']}: {faults['calls_failed']} AWS calls failed, {faults['calls_stalled']} stalled |
| repeated at once after a 202 (another instance, the first frozen) | {req['repeated_after_202']}: {req['repeats_replayed']} answered as replays, {req['repeats_409']} × 409 (retries of the repeats: {repeat_causes or 'none'}) |
| kills | bridge (SIGKILL, often mid-batch, back 1–2 s later): {faults['bridge_kills']}; function instances (SIGKILL: busy api and audiences instances mid-request, consumer and changes instances): {faults['function_kills']} |
| instances | api: {inst['api']['cold_starts']} cold starts, {inst['api']['invocations']} invocations; consumer: {inst['consumer']['cold_starts']} cold starts, {inst['consumer']['invocations']} invocations |
| SQS SendMessage calls by the api | {faults['sqs_send_message_calls']} for {req['accepted']} accepted upserts |
| messages delivered to the consumer | {faults['messages_delivered']} in {faults['batches']} batches, {faults['redelivered']} redeliveries |
| poison messages injected / in the DLQ | {faults['poison_messages']} / {faults['dlq_messages']} |
| load phase | {req['load_seconds']} s |
| recovery (last fault cleared → queue drained, every user correct) | {summary['recovery_seconds']} s |
| change events (this workspace) | {summary['events']['events']} received, {summary['events']['duplicates_dropped']} duplicates dropped by id, {summary['events']['user_deleted']} × User Deleted; replayed per user in version order they rebuild {summary['events']['users_rebuilt']} of {summary['events']['users']} users |
| audiences (this workspace) | {summary['audiences']['audiences']} defined before the load; members at the end {summary['audiences']['members']}; {summary['audiences']['events']} distinct Entered/Exited events; parked user `{summary['audiences']['parked']['user']}`: {summary['audiences']['parked']['parked']} parked, {summary['audiences']['parked']['redriven']} redriven |
| webhooks (this workspace) | {webhook_row(summary['webhooks'])} |
| log scan (functions, bridge) | {summary['logs']['api_keys']} API keys, {summary['logs']['email_addresses']} email addresses |

## Checks

| check | result |
|---|---|
{rows}

## How

- Clients retry with the same Idempotency-Key and body after a timeout ({cfg['client_timeout_s']} s), 409,
  429 and 5xx, honouring `Retry-After`, as the TypeScript SDK does. The drill's key has a rate
  limit of {cfg['rate_limit_per_s']}/s so that 429s happen.
- Faults come from the stack's fault proxy between the functions and moto, cycled two seconds
  apart while the clients run:
{windows}
- The functions run as Lambda runs them, under the stack's faithful runtime (`dev/faithful`):
  release binaries, each instance frozen (SIGSTOP) the moment it answers and resumed only
  for its next event, several api and consumer instances at once (at least 4 and 2), each
  held frozen for a random 0–1 s after every answer, so retries land on other instances.
  After {int(ECHO_SHARE * 100)} % of the 202s the client repeats the request at once: it must be replayed.
- The SQS → consumer bridge is a process of its own; the drill SIGKILLs it (often mid-batch)
  and restarts it. It also SIGKILLs function instances without warning (a busy api
  instance: its client gets API Gateway's 500; a consumer instance: its batch is not
  deleted); the next events cold-start new ones. Messages the consumer's bridge receives stay
  invisible for 4 s locally (`VF_BRIDGE_VISIBILITY_SECONDS`, so that a killed bridge's batch
  comes back soon), and a failed message comes back after 3 s (`VF_BRIDGE_RETRY_SECONDS`), so
  five receives span longer than any fault window; on AWS both are the queue's 180 s visibility
  timeout. The other bridges are not killed and keep their queue's visibility, longer than
  their function's longest batch as on AWS (a webhooks batch can wait 15 s on an endpoint).
- A 500 during the drill: when the drill kills a busy api instance, its client gets API
  Gateway's own `500 {{"message":"Internal Server Error"}}`, the answer AWS gives when an
  invocation crashes. The local front keeps that status and body and adds
  `X-Faithful-Outcome: Runtime.ExitError` and `X-Faithful-Death: killed`, so those 500s are
  counted exactly, as `killed`, and retried like any 5xx. The service's own 500 is its
  envelope `{{"errors":[{{"code":"internal",…}}]}}`: a bug, and it fails the drill, as does any
  other 500 (an instance that exited by itself, a gateway 500 no kill explains). A 503 is
  the service's `unavailable` (a dependency failed, `Retry-After: 1`) or API Gateway's
  `{{"message":"Service Unavailable"}}` for a function past its timeout (no `Retry-After`):
  retried and counted, not a failure by itself (`dev/drill/answers.py`).
- About {int(DELETE_SHARE * 100)} % of the requests erase their user (`DELETE`) instead of upserting it.
- Change events: the drill drains the stack's event sink (a rule on the change bus) and, for
  each user, drops duplicate ids, applies `User Changed` (set `new`, remove when there is no
  `new`) and `User Deleted` in `version` order, and compares the result with what a read of
  the user shows.
- Audiences: five are defined before the load (`dev/drill/audiences.py`: `eq`, `in`,
  `exists`, `all` with `ne`, `any` with `gte`, over the fields the load writes). After
  recovery, each one's members as `GET /api/v1/audiences/{{id}}/members` lists them must
  equal a Python evaluation of its rule over the users as reads show them; and the
  `Audience Entered`/`Exited` events at the sink, de-duplicated by id and replayed per
  (audience, user) in user-version order, must alternate and end in that same membership.
  All load long, one user's membership reads fail (a standing fault): the audiences
  function parks it by id and goes on; after the load the drill waits for it in the
  parked queue, lifts the fault and runs `vfctl dlq redrive --queue parked`, and the
  user's memberships are checked with everyone's.
- The oracle is independent of the Rust code: the drill reads each accepted request's stamp
  (`accepted_at`, request id) from its Idempotency-Key record, applies the accepted bodies and
  erasures in stamp order in Python, and compares values and per-field stamps with the users table.
  A field whose stored stamp is older than expected would be a lost or re-applied upsert; a
  stamp of no accepted request would be a refused request that changed something.
- Webhooks (`dev/drill/webhooks.py`): three endpoints of the workspace on this machine,
  subscribed before the load, the stack run with `WEBHOOK_TIME_FACTOR=3600` (the schedule's
  minutes are seconds): `steady` answers 200; `flaky` refuses each message a few times by
  a script its id draws (503, 500, 429 with `Retry-After: 1`, and twice no answer within the
  service's 15 s), then 200; `gone` answers 200 five times, then 410. Every request is
  verified with `standardwebhooks` from PyPI. After recovery, every bus event of the
  workspace the rule took must have reached `steady` and `flaky` (a 2xx), none other,
  repeats counted (receivers drop them by `webhook-id`); per (endpoint, user) the first
  receipts must rise in `sequence` (lane order), and those whose version is below one
  already received (an event that reached the service after a newer one of the user was
  sent: an audience move evaluated after the next change) are counted as late; `gone`
  must be disabled, no
  attempt on it may have started after its `disabled_at`, and `steady` must have taken
  one `webhook.disabled` about it.
- Parser fuzzing is separate: `make fuzz` (in CI) runs the property tests over arbitrary
  bytes and JSON with more cases.
""")
