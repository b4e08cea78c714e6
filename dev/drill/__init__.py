"""`make drill`: load and faults against the local stack, then proof that nothing was
lost, duplicated or leaked.

M clients send K upserts each over a shared pool of users, with Idempotency-Keys and
retries (after a timeout, 409, 429, 5xx), while a chaos thread makes DynamoDB and SQS
calls fail or stall (the stack's fault proxy), kills and restarts the SQS → consumer
bridge mid-batch, and puts poison messages on the queue. Probes that must be refused
(422, 401, 403, 413, 415) carry markers that must never be stored. Then, with the faults
cleared, the drill waits for the queue to drain and checks:

- every 202 applied, and each user's stored state (values and per-field stamps) equals
  the in-order application of its accepted upserts, ordered by the stamps that the
  Idempotency-Key records hold (an independent re-implementation of the merge);
- nothing applied twice in effect: no stored field carries an older or unknown stamp;
- every non-202 changed nothing: no marker stored, no stamp from a refused request;
- every retried request eventually got its 202;
- every 500 met was API Gateway's for an api instance the drill killed mid-request
  (answers.py tells it from the service's own `internal`, which fails, by body and the
  faithful front's X-Faithful-Outcome / X-Faithful-Death headers);
- the DLQ holds exactly the poison messages;
- cross-workspace reads, writes and Idempotency-Keys are refused or isolated;
- the function and bridge logs hold no API key and no email address.

Figures go to target/drill/summary.json and docs/reliability.md. Exit status 1 when a
check fails. Bounded: VF_DRILL_CLIENTS (8) × VF_DRILL_UPSERTS (50), VF_DRILL_USERS
(20) users, VF_DRILL_SEED (7); the whole drill gives up after VF_DRILL_DEADLINE (600) s.

`dev/drill.py` is the entry point; the parts, one module a role:

    settings.py  the drill's size, seed, deadline, workspaces and URLs (VF_DRILL_ variables)
    load.py      the clients: upsert bodies, requests with retries, the refused probes
    answers.py   each attempt's kind: a 5xx is the service's envelope or API Gateway's (killed?)
    chaos.py     the faults, bridge kills, function-instance kills and poison messages
    oracle.py    the checks: expected vs stored state, change events, cross-workspace, logs
    report.py    docs/reliability.md and target/drill/summary.json
    run.py       the drill as a whole: stack, load with chaos, checks, report
"""
