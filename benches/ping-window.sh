# Sourced by benches/instructions and benches/profile: the counted window of one server.
#   ping_window OUT LOG SECS CMD...
# Runs CMD under callgrind on core 0 (its output to LOG, the profile to OUT.1), waits for
# its listening line, loads GET /ping with wrk -t1 -c8 from core 1 for 1 s of warm-up,
# zeroes the counters, counts the next SECS seconds, dumps the profile and kills the
# server. Sets REQS: the requests wrk completed in the counted window.
. benches/listening.sh
ping_window() {
  local out=$1 log=$2 secs=$3; shift 3
  # Emptied here, not by the redirection below: that runs in the background job, and
  # `listening` could read the previous server's line first.
  : > "$log"
  taskset -c 0 valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out" "$@" > "$log" 2>/dev/null &
  local pid=$! addr
  addr=$(listening "$log" 30) || { echo "$1: no listening line" >&2; kill -9 "$pid"; return 1; }
  taskset -c 1 wrk -t1 -c8 -d1s "http://$addr/ping" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  REQS=$(taskset -c 1 wrk -t1 -c8 -d"${secs}s" "http://$addr/ping" | awk '/requests in/{print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
