#!/usr/bin/env bash
# Runs inside `dev/stack.py run`: the stack tests (the ignored tests of the `stack`
# binary, Segment's real libraries among them), the stack's cleanup test, schemathesis against openapi.yaml and the
# TypeScript SDK, all against the running local stack. Every suite runs even when an
# earlier one fails; the end says which failed.
set -uo pipefail
cd "$(dirname "$0")/.."

source dev/steps.sh

# The Node libraries the stack tests drive: Segment's and RudderStack's, and Standard
# Webhooks' verifier (the Python ones come with the venv, dev/requirements.txt).
step "segment libraries" bash -c 'cd dev/segment && npm ci --no-audit --no-fund --loglevel=error'
step "webhook verifiers" bash -c 'cd dev/webhooks && npm ci --no-audit --no-fund --loglevel=error'
step "stack tests" cargo test -p vibefollow-users --test stack --no-fail-fast -- --ignored

# A stack killed with SIGKILL leaves nothing behind (starts a second stack of its own).
step "stack cleanup" .venv/bin/python -m unittest dev/stack_cleanup_test.py

schemathesis() {
  local key
  key=$(cargo run -q --bin vfctl -- --local keys create --workspace schemathesis \
    --scopes users:write,users:read,users:read_pii,users:delete,audiences:write,audiences:read,webhooks:write,webhooks:read --rate-limit 100000) || return 1
  # positive_data_acceptance is left out: the contract counts bytes (external_user_id,
  # trait lengths), nesting depth and DynamoDB number range, which JSON Schema cannot
  # state exactly, so some schema-valid data is rightly refused. Every other check runs,
  # including not_a_server_error and negative_data_rejection. The hooks drop requests
  # that the local emulator itself cannot carry (see dev/schemathesis_hooks.py). One
  # worker: with two threads, hypothesis' lambda descriptions (ast.parse) meet CPython
  # 3.11's "AST constructor recursion depth mismatch" now and then, a runtime error of
  # the tool, not of the API. use_after_free is left out too: DELETE answers 202 and the
  # erasure is applied by the consumer (contract, "DELETE …"), so a read in the next
  # milliseconds may still find the user; that it goes, and stays gone, is
  # tests/stack/erase.rs.
  SCHEMATHESIS_HOOKS=dev.schemathesis_hooks .venv/bin/schemathesis --config-file dev/schemathesis.toml run openapi.yaml \
    --url "$VF_API_URL" \
    --header "Authorization: Bearer $key" \
    --checks all --exclude-checks positive_data_acceptance,use_after_free \
    --max-examples "${VF_SCHEMATHESIS_EXAMPLES:-60}" \
    --seed 1 --generation-deterministic \
    --workers 1 --no-color --warnings off
}
step "schemathesis" schemathesis

# The TypeScript SDK: unit tests against a stub server, and the documented example
# verbatim against this stack.
sdk() {
  local key
  key=$(cargo run -q --bin vfctl -- --local keys create --workspace sdk \
    --scopes users:write,users:read,users:read_pii) || return 1
  (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error &&
    VIBEFOLLOW_API_KEY="$key" VIBEFOLLOW_BASE_URL="$VF_API_URL" npm test)
}
step "typescript sdk" sdk

steps_done "integration"
