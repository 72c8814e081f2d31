#!/usr/bin/env bash
# Overload: a release pixgate (fs backend, 2 workers) under 32 concurrent connections of
# distinct-URL misses (T1: the 12 MP JPEG -> 400-499 px JPEG at qualities 60-99), against the same server
# uncontended (one connection). For each transform.max_queue_wait_ms given (0 = off: only
# queue_len bounds the queue, the behaviour before issue 20) prints, from one fresh server each:
# requests answered 200 and 503, admitted p50/p99, the uncontended p99, and the server's RSS
# before the load and its peak during it (sampled every 20 ms). Issue 20's goal: p99 of admitted <= 3x uncontended p99, peak RSS <= 256 MiB.
#
#   cargo build --release && bash benches/overload.sh [WAITS...]     # default: 0 1000 200
set -euo pipefail
cd "$(dirname "$0")/.."
photo=${PHOTO:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
conns=${CONNS:-32}
secs=${SECS:-20}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
waits=("$@")
[ ${#waits[@]} -gt 0 ] || waits=(0 1000 200)

key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
salt=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__KEYS=$key PIXGATE__SIGNING__SALTS=$salt
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=error PIXGATE__TRANSFORM__WORKERS=2
# One client address and one user: the per-IP and per-user limits are not what is measured.
export PIXGATE__LIMITS__REQUESTS_PER_MINUTE=100000000 PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=100000000
export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=100000000 PIXGATE__LIMITS__UPLOADS_PER_HOUR=100000000

# Signed paths (imgproxy's scheme: base64url(HMAC-SHA256(key, salt + path))): `n` distinct
# URLs from the `first`-th of one shuffled list of T1 widths 400-499 (all a 1/8-scale decode of
# the 4000 px photo, so calm and storm requests cost the same) times qualities 60-99.
paths() { # $1 = image id, $2 = first, $3 = count
  python3 - "$key" "$salt" "$1" "$2" "$3" <<'PY'
import base64, hashlib, hmac, random, sys
key, salt, image, first, n = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
combos = [(w, q) for w in range(400, 500) for q in range(60, 100)]
random.Random(20).shuffle(combos)
for w, q in combos[first:first + n]:
    path = f"/rs:fit:{w}:0/f:jpg/q:{q}/plain/{image}"
    sig = base64.urlsafe_b64encode(hmac.new(key, salt + path.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    print(f"/{sig}{path}")
PY
}

run_one() { # $1 = max_queue_wait_ms
  local work; work=$(mktemp -d)
  PIXGATE__SERVER__LISTEN=127.0.0.1:0 PIXGATE__STORAGE__FS_ROOT="$work/data" \
    PIXGATE__TRANSFORM__MAX_QUEUE_WAIT_MS="$1" "$bin" serve > "$work/out" 2> "$work/err" &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
  local base; base=$(sed -n 's/^pixgate listening on //p' "$work/out")
  local port=${base##*:}
  local token; token=$("$bin" token --sub bench --role editor)
  local id
  id=$(curl -s -X POST "$base/v1/images" -H "Authorization: Bearer $token" \
    -H "Content-Type: image/jpeg" --data-binary @"$photo" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p')
  [ -n "$id" ] || { cat "$work/err" >&2; kill "$pid"; exit 1; }
  paths "$id" 0 60 > "$work/calm"
  paths "$id" 60 3940 > "$work/storm"
  local calm storm
  calm=$(python3 benches/overload.py --port "$port" --urls "$work/calm" --conns 1 --secs 60)
  storm=$(python3 benches/overload.py --port "$port" --urls "$work/storm" --conns "$conns" \
    --secs "$secs" --pid "$pid")
  echo "$storm" >> "${OVERLOAD_RAW:-/dev/null}"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ -z "${OVERLOAD_STDERR:-}" ] || cp "$work/err" "$OVERLOAD_STDERR"
  rm -rf "$work"
  python3 - "$1" "$calm" "$storm" <<'PY'
import json, sys
wait, calm, storm = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
s = storm["status"]
other = sum(n for k, n in s.items() if k not in ("200", "503"))
print(f"{wait:>18} {calm['p99_ms']:>10} {s.get('200', 0):>6} {s.get('503', 0):>6} {other:>6} "
      f"{storm['ok_per_sec']:>7} {storm['p50_ms']:>8} {storm['p99_ms']:>8} "
      f"{storm['p99_ms'] / calm['p99_ms']:>7.1f}x {storm['rss_before_mib']:>7} {storm['peak_rss_mib']:>9}")
PY
}

echo "pixgate overload: $conns connections of distinct-URL T1 misses for ${secs}s, 2 workers, fs backend"
printf '%18s %10s %6s %6s %6s %7s %8s %8s %8s %7s %9s\n' max_queue_wait_ms calm_p99 200s 503s other ok/s p50 p99 p99/calm rss_MiB peak_MiB
for w in "${waits[@]}"; do run_one "$w"; done
