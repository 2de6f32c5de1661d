# Sourced by the bench scripts: where a server under test listens.
#   listening LOG SECS
# Prints the host:port of the first `http=` in LOG (the server's listening line), waiting
# up to SECS seconds for it to appear; returns 1, printing nothing, if it never does.
listening() {
  local log=$1 secs=$2 addr="" i
  for ((i = 0; i < secs * 20; i++)); do
    addr=$(grep -o 'http=[^ ]*' "$log" 2>/dev/null | head -1 | cut -d= -f2) || true
    if [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    sleep 0.05
  done
  return 1
}
