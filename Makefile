# VibeFollow Users. `make dev` runs the local stack, `make test` the whole suite.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECK_VENV := .venv-check
CHECK_STAMP := $(CHECK_VENV)/.installed
# SAM, cfn-lint, checkov and cargo-lambda (+ zig for arm64) from .venv-check.
CHECK_ENV := PATH="$(CURDIR)/$(CHECK_VENV)/bin:$$PATH" AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0

.PHONY: dev test bench bench-full bench-profiles flood audience-latency webhook-latency webhook-schedule scale drill fuzz check build-arm64 deploy deploy-prod venv fmt clean

$(STAMP): dev/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r dev/requirements.txt
	touch $(STAMP)

venv: $(STAMP)

## Local stack on http://127.0.0.1:9000 until Ctrl-C; prints a dev key.
dev: $(STAMP)
	$(PY) dev/stack.py up

## Unit and use-case tests (what a plain `cargo test` runs), the local stack's own tools,
## then the stack tests against the local stack (started here, the functions under the
## Lambda-faithful runtime). Every step runs; the failures are summed up at the end.
test: $(STAMP)
	dev/test.sh

## Benchmarks, the quick run (~4 min on 2 cores once the builds are current; builds
## come first after a change):
## criterion (shorter), load runs, change events, CPU/init/RSS per invocation and
## capacity units against a release-build local stack (loopback only, bounded). Writes
## target/bench/summary.json, the measured table of docs/performance.md (rows it does
## not measure say so) and docs/cost.md. COMPARE=DIR: the probe also measures DIR's api
## and consumer (binaries from before a change), interleaved with this build's.
BENCH_COMPARE = $(if $(COMPARE),--compare-binaries $(COMPARE))
bench: $(STAMP)
	$(PY) dev/bench.py $(BENCH_COMPARE)

## Every figure (25+ min on 2 cores): the quick run's with full-length criterion, load
## runs and probes, plus callgrind's instruction count and the arm64 build's sizes.
bench-full: $(STAMP)
	$(PY) dev/bench.py --full $(BENCH_COMPARE)

## Audiences live: accepted upsert → `Audience Entered` at a subscriber, p50/p99 at 20
## upserts/s with 20 audiences and at higher rates (dev/audience_latency.py); BUILD=100000
## measures a build over that many users instead.
audience-latency: $(STAMP)
	$(PY) dev/stack.py run -- $(PY) dev/audience_latency.py $(if $(BUILD),--build $(BUILD))

## Webhooks: accepted upsert → delivery received by a listener on this machine,
## p50/p90/p99 at 5 upserts/s for 60 s, each delivery verified with `standardwebhooks`
## (dev/webhook_latency.py; VF_WEBHOOK_BENCH_RATE, VF_WEBHOOK_BENCH_SECONDS).
webhook-latency: $(STAMP)
	$(PY) dev/stack.py run -- $(PY) dev/webhook_latency.py

## The webhook retry schedule and a 5-day disabling, time divided by WEBHOOK_TIME_FACTOR
## (default 3600: 10 h → 10 s, 5 days → 2 min); about 3 minutes.
WEBHOOK_TIME_FACTOR ?= 3600
webhook-schedule: $(STAMP)
	WEBHOOK_TIME_FACTOR=$(WEBHOOK_TIME_FACTOR) $(PY) dev/stack.py run -- $(PY) dev/webhook_schedule.py

## Scale (docs/scale.md): the target's load shape × SCALE (default 0.001: 10 upserts/s, 3 of
## them in one heavy workspace with 100 audiences, the rest over 16 light ones; an import,
## time edges, a poison user) against a stack whose proxy holds AWS's per-key and PutEvents
## limits × SCALE; SECONDS a phase (default 180; ~19 min in all on 2 cores, setup at AWS's
## own limits; the tick every 60 s, as on AWS). Ends with `scale: lost …, hot keys …`; writes
## target/scale/summary.json and docs/scale.md's Measured section (dev/scale.py). SCALE
## 0.0005 is 5 upserts/s: at 0.001 (10/s) the emulator on 2 cores is at its knee and its
## latency, not the design's, is what a run shows.
SCALE ?= 0.0005
scale: $(STAMP)
	VF_SCALE=$(SCALE) VF_TICK_SECONDS=60 $(PY) dev/stack.py run -- $(PY) dev/scale.py $(if $(SECONDS),--seconds $(SECONDS))

## A flood of 2,000 requests with random bad keys beside a steady valid load: the valid
## requests' latency alone, under the flood and after it, the key cache's hits (dev/flood.py).
flood: $(STAMP)
	$(PY) dev/stack.py run -- $(PY) dev/flood.py

## The release-profile matrix: size, speed and build time of each setting (slow).
bench-profiles: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bench/profile-matrix.sh

## Reliability drill: load + faults + kills + poison, then the checks; writes
## docs/reliability.md and target/drill/summary.json.
drill: $(STAMP)
	$(PY) dev/drill.py

## Property tests of the request parser with many more cases than `make test` (bounded).
fuzz:
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} cargo test --workspace --lib contract::

$(CHECK_STAMP): dev/requirements-check.txt
	python3 -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/pip install --quiet --disable-pip-version-check -r dev/requirements-check.txt
	touch $(CHECK_STAMP)

## Offline checks of the AWS side: template lint and policy scan, least privilege of the
## template as SAM expands it (dev/check_iam.py, after its own tests), then the arm64 build.
check: $(CHECK_STAMP)
	$(CHECK_ENV) sam validate --lint
	$(CHECK_ENV) cfn-lint template.yaml
	$(CHECK_ENV) checkov -f template.yaml --framework cloudformation --compact --quiet --skip-download
	$(CHECK_ENV) python -m unittest discover -s dev -p 'test_check_iam.py'
	$(CHECK_ENV) python dev/check_iam.py template.yaml
	$(MAKE) build-arm64

## sam build: the five functions as arm64 `bootstrap` binaries under .aws-sam/build.
build-arm64: $(CHECK_STAMP)
	rustup target add aarch64-unknown-linux-gnu
	$(CHECK_ENV) sam build --beta-features
	@for f in ApiFunction ConsumerFunction ChangesFunction AudiencesFunction WebhooksFunction; do \
	  file .aws-sam/build/$$f/bootstrap | grep -q 'ARM aarch64' || { echo "$$f: not an arm64 binary"; exit 1; }; \
	  echo "$$f/bootstrap: $$(stat -c %s .aws-sam/build/$$f/bootstrap) bytes (arm64, stripped)"; \
	done

## Deploy to the AWS account of your current credentials (samconfig.toml: default = dev).
deploy: build-arm64
	$(CHECK_ENV) sam deploy

deploy-prod: build-arm64
	$(CHECK_ENV) sam deploy --config-env prod

fmt:
	cargo fmt --all

clean:
	rm -rf .local .aws-sam $(VENV) $(CHECK_VENV) target
