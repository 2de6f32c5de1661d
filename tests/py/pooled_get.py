"""A real client's connection pool against a lameduck server: GET a URL over urllib3's
keep-alive pool, one request after another, for a while; never retry. Prints one JSON
line: how many requests were sent, how many failed and the first few errors.

    python pooled_get.py URL SECONDS [CONNECTIONS]

A request that fails on a pooled connection the server closed (the keep-alive reuse race)
counts as failed: urllib3 would retry it, but a POST cannot be, so retries are off.
"""

import json
import sys
import time

import urllib3


def main() -> int:
    url, seconds = sys.argv[1], float(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    pool = urllib3.PoolManager(maxsize=conns, block=True, retries=False, timeout=5.0)
    sent = failed = 0
    errors = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and sent < 1_000_000:
        sent += 1
        try:
            res = pool.request("GET", url, preload_content=True)
            if res.status != 200:
                failed += 1
                errors.append(f"status {res.status}")
        except urllib3.exceptions.HTTPError as e:
            failed += 1
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"requests": sent, "failed": failed, "errors": errors[:5]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
