#!/usr/bin/env bash
# Measures what each release-profile setting does to the stripped arm64 binaries (size),
# to the 1 KB hot path (instructions per request under callgrind, x86-64: stable on a
# busy machine, unlike time) and to the arm64 build time. Each variant changes
# one setting of [profile.release] through CARGO_PROFILE_RELEASE_* and builds in its own
# target directory. Slow (a full release build per variant, twice): `make bench-profiles`.
# Output: target/bench/profiles.json and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench/profiles.json
mkdir -p target/bench


variants=(
  "shipped:"
  "lto=thin:CARGO_PROFILE_RELEASE_LTO=thin"
  "opt-level=s:CARGO_PROFILE_RELEASE_OPT_LEVEL=s"
  "opt-level=z:CARGO_PROFILE_RELEASE_OPT_LEVEL=z"
  "panic=unwind:CARGO_PROFILE_RELEASE_PANIC=unwind"
)
[ $# -gt 0 ] && variants=("$@")

echo "[" > "$out.tmp"
first=1
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  setting=${variant#*:}
  dir=target/profiles/${name//[^a-z0-9]/-}
  start=$(date +%s)
  env $setting CARGO_TARGET_DIR="$dir" cargo lambda build --quiet --release --arm64 --bin api --bin consumer
  build_s=$(( $(date +%s) - start ))
  api=$(stat -c %s "$dir/lambda/api/bootstrap")
  consumer=$(stat -c %s "$dir/lambda/consumer/bootstrap")
  env $setting CARGO_TARGET_DIR="$dir" cargo build --quiet --release -p vibefollow-bench --bin hot_path_count
  ir() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$dir/release/hot_path_count" "$1" 2>&1 |
         sed -n 's/.*Collected : \([0-9]*\).*/\1/p'; }
  hot_ir=$(( ($(ir 3000) - $(ir 1000)) / 2000 ))
  printf '%-18s api %9d B  consumer %9d B  1 KB hot path %7d instructions  arm64 build %4d s\n' "$name" "$api" "$consumer" "$hot_ir" "$build_s"
  [ $first = 1 ] || echo "," >> "$out.tmp"
  first=0
  printf '{"variant":"%s","api_bytes":%d,"consumer_bytes":%d,"hot_path_1kb_instructions":%d,"arm64_build_seconds":%d}\n' \
    "$name" "$api" "$consumer" "$hot_ir" "$build_s" >> "$out.tmp"
done
echo "]" >> "$out.tmp"
mv "$out.tmp" "$out"
python3 - "$out" docs/performance.md <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
base = rows[0]
def delta(value, ref):
    return f"{value:,} ({(value - ref) / ref:+.1%})" if value != ref else f"{value:,}"
table = ["| variant | api bytes | consumer bytes | 1 KB hot path, instructions | arm64 build |",
         "|---|---|---|---|---|"]
for r in rows:
    table.append(f"| {r['variant']} | {delta(r['api_bytes'], base['api_bytes'])} | "
                 f"{delta(r['consumer_bytes'], base['consumer_bytes'])} | "
                 f"{delta(r['hot_path_1kb_instructions'], base['hot_path_1kb_instructions'])} | "
                 f"{r['arm64_build_seconds']} s |")
doc = open(sys.argv[2]).read()
begin, end = "<!-- profiles:begin -->", "<!-- profiles:end -->"
start, stop = doc.index(begin) + len(begin), doc.index(end)
open(sys.argv[2], "w").write(doc[:start] + "\n" + "\n".join(table) + "\n" + doc[stop:])
PY
echo "written: $out and the table in docs/performance.md"
