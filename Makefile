# VibeFollow Users. `make dev` runs the local stack, `make test` the whole suite.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test unit venv fmt clean

$(STAMP): dev/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r dev/requirements.txt
	touch $(STAMP)

venv: $(STAMP)

## Local stack on http://127.0.0.1:9000 until Ctrl-C; prints a dev key.
dev: $(STAMP)
	$(PY) dev/stack.py up

## Unit tests, then integration tests against the local stack (started here).
test: $(STAMP)
	cargo test --workspace --lib --bins
	cargo build --workspace --bins --tests
	$(PY) dev/stack.py run -- dev/integration.sh

fmt:
	cargo fmt --all

clean:
	rm -rf .local $(VENV) target
