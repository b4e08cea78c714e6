# Sourced by dev/test.sh and dev/integration.sh: `step NAME CMD…` runs a suite and
# remembers its failure instead of stopping; `steps_done WHO` reports and sets the exit.
failed=()

step() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then
    failed+=("$name")
  fi
}

steps_done() {
  if ((${#failed[@]})); then
    echo "$1: FAILED: ${failed[*]}"
    return 1
  fi
  echo "$1: every suite passed"
}
