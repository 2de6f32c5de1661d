# Sourced by the bench scripts: keep every run's raw results and judge them with the
# harness's tested code (benches/harness/src/verdict.rs), never in the script.
#   build_ld_bench                 build target/release/ld-bench
#   save_raw SCRIPT COMMAND DATA   write DATA (a JSON file of the script's raw results) as
#                                  docs/data/SCRIPT-DATE-COMMIT[-N].json; prints the path
#   judge RAW                      print the verdict (markdown) and append the run's line to
#                                  docs/benchmark-runs.md; returns 0 only when every target
#                                  is met
# The commit is HEAD's short id, with +dirty when files outside docs/ differ from it.

LD_BENCH=target/release/ld-bench

build_ld_bench() {
  (cd benches && CARGO_TARGET_DIR=../target cargo build --release -q -p ld-bench)
}

commit_id() {
  local c
  c=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain -- . ':!docs' 2>/dev/null)" ]; then c="$c+dirty"; fi
  echo "$c"
}

save_raw() { # save_raw SCRIPT COMMAND DATA_JSON -> prints the raw file's path
  local script=$1 command=$2 data=$3 day commit path n=1
  day=$(date -u +%Y-%m-%d)
  commit=$(commit_id)
  mkdir -p docs/data
  path="docs/data/$script-$day-$commit.json"
  while [ -e "$path" ]; do
    n=$((n + 1))
    path="docs/data/$script-$day-$commit-$n.json"
  done
  python3 - "$script" "$day" "$commit" "$command" "$data" "$path" <<'PY'
import json, sys
script, day, commit, command, data, path = sys.argv[1:7]
raw = {"script": script, "date": day, "commit": commit, "command": command,
       "data": json.load(open(data))}
with open(path, "w") as f:
    json.dump(raw, f, indent=1)
    f.write("\n")
PY
  echo "$path"
}

judge() { # judge RAW
  "$LD_BENCH" verdict "$1" --log docs/benchmark-runs.md
}
