#!/usr/bin/env bash
# pixgate as a CDN origin, against nginx serving the same bytes as a static file.
#
# One run, one client (wrk), same concurrency, same machine, alternating rounds:
#   1. cache hits: a release pixgate (fs backend) serving a signed transform URL from its memory
#      cache, vs nginx (Debian package) serving the identical response body as a file;
#   2. misses: pixgate on distinct signed URLs of a 12 MP JPEG (every request a full fetch +
#      decode + resize + encode + background derived write), the throughput of 2 cores.
#
#   cargo build --release && bash benches/cdn_origin.sh [PHOTO]
#
# Environment: ROUNDS (3), SECS (10) per hit round, CONNS (32) hit connections, MISS_SECS (20),
# MISS_CONNS (4), HIT_WIDTH (800). LOGS=1 logs every request on both sides (pixgate at `info`,
# nginx's access log to a file); by default neither does. pixgate always writes its audit
# trail (one event per request, archived under $work/data/audit) and, by default, the `audit`
# log stream; AUDIT_LOG=0 turns that stream off (`audit=off`), keeping the archive. Installs
# nginx and wrk from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
photo=${1:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
rounds=${ROUNDS:-3} secs=${SECS:-10} conns=${CONNS:-32}
miss_secs=${MISS_SECS:-20} miss_conns=${MISS_CONNS:-4}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$photo" ] || { echo "photo not found: $photo" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# Debugging: KEEP=1 keeps the work directory.
[ -n "${KEEP:-}" ] && trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; echo "kept $work"' EXIT

# --- pixgate: fs backend; the limits a single benchmark client would trip are opened wide
# (behind a CDN the per-IP limit counts clients, not the edge).
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export PIXGATE__SERVER__LISTEN=127.0.0.1:0
export PIXGATE__STORAGE__FS_ROOT="$work/data"
export PIXGATE__SIGNING__KEYS=$(hex 32) PIXGATE__SIGNING__SALTS=$(hex 16)
export PIXGATE__AUTH__JWT_HS256_SECRET=$(hex 32)
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
if [ -n "${LOGS:-}" ]; then log_level=info; access_log="access_log $work/access.log;"; else
  log_level=warn; access_log="access_log off;"; fi
if [ "${AUDIT_LOG:-1}" = 0 ]; then log_level="$log_level,audit=off"; fi
export PIXGATE__LOG__LEVEL=$log_level PIXGATE__TRANSFORM__WORKERS=2
export PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=1000000000
export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=1000000000
export PIXGATE__LIMITS__UPLOADS_PER_HOUR=1000000000
"$bin" serve > "$work/out" 2> "$work/err" &
pids+=($!)
for _ in $(seq 200); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^pixgate listening on //p' "$work/out")
[ -n "$base" ] || { cat "$work/err"; exit 1; }

token=$("$bin" token --sub bench --role editor)
curl -sf -o "$work/meta.json" -X POST "$base/v1/images" -H "Authorization: Bearer $token" \
  -H "Content-Type: image/jpeg" --data-binary @"$photo"
id=$(sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' "$work/meta.json")
[ -n "$id" ] || { cat "$work/meta.json"; exit 1; }

# The hit: an 800 px WebP of the photo (a typical page image), computed once.
hit_w=${HIT_WIDTH:-800}
hit_path=$("$bin" sign "/rs:fit:$hit_w:0/f:webp/plain/$id")
mkdir -p "$work/www"
# nginx workers run as an unprivileged user: let them read the file.
chmod 755 "$work" "$work/www"
curl -sf -o "$work/www/hit.webp" "$base$hit_path"
chmod 644 "$work/www/hit.webp"
curl -sf -o /dev/null "$base$hit_path"
bytes=$(stat -c %s "$work/www/hit.webp")

# --- nginx: 2 workers (the machine's cores), static file with sendfile, no access log, the
# same Content-Type and an ETag; keep-alive as pixgate.
nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  $access_log
  sendfile on; tcp_nopush on;
  keepalive_requests 1000000;
  types { image/webp webp; }
  server {
    listen 127.0.0.1:$nport;
    root $work/www;
    location / { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
EOF
/usr/sbin/nginx -c "$work/nginx.conf" -g 'daemon off;' -p "$work" &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$nport/hit.webp" && break; sleep 0.05; done
curl -s -o "$work/nginx.webp" "http://127.0.0.1:$nport/hit.webp"
cmp -s "$work/www/hit.webp" "$work/nginx.webp" \
  || { echo "nginx does not serve the same bytes" >&2; exit 1; }

# wrk prints "Requests/sec:" and, if any, "Non-2xx or 3xx responses:".
rps() { # $1 = url, $2 = seconds, $3 = connections
  local out; out=$(wrk -t1 -c"$3" -d"$2s" --latency "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec:/ {print $2}' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "CDN-origin benchmark: $(nproc) cores, wrk -t1 -c$conns, ${secs}s x $rounds alternating rounds"
echo "hit body: ${bytes} bytes ($hit_w px WebP of $(basename "$photo"))"
p_runs=() n_runs=()
for r in $(seq "$rounds"); do
  p=$(rps "$base$hit_path" "$secs" "$conns"); p_runs+=("$p")
  n=$(rps "http://127.0.0.1:$nport/hit.webp" "$secs" "$conns"); n_runs+=("$n")
  printf '  round %d: pixgate %10.0f req/s   nginx %10.0f req/s\n' "$r" "$p" "$n"
done
pm=$(printf '%s\n' "${p_runs[@]}" | median)
nm=$(printf '%s\n' "${n_runs[@]}" | median)
printf 'cache hit, median: pixgate %.0f req/s, nginx %.0f req/s, ratio %.2fx (goal >= 0.80x)\n' \
  "$pm" "$nm" "$(awk -v a="$pm" -v b="$nm" 'BEGIN {print a/b}')"

# --- misses: distinct widths, so every request computes.
count=$(( miss_secs * 100 ))
: > "$work/paths"
for i in $(seq 0 $((count - 1))); do "$bin" sign "/rs:fit:$((400 + i)):0/f:webp/plain/$id" >> "$work/paths"; done
cat > "$work/miss.lua" <<'EOF'
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
EOF
before=$(curl -s "$base/metrics" | awk '/^pixgate_transform_duration_seconds_count/ {print $2}')
out=$(PATHS_FILE="$work/paths" wrk -t1 -c"$miss_conns" -d"${miss_secs}s" --latency -s "$work/miss.lua" "$base")
after=$(curl -s "$base/metrics" | awk '/^pixgate_transform_duration_seconds_count/ {print $2}')
if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; exit 1; fi
computed=$(awk -v a="$after" -v b="$before" 'BEGIN {print a-b}')
total=$(awk '/requests in/ {print $1}' <<<"$out")
[ "$total" -le "$count" ] || { echo "more requests ($total) than distinct URLs ($count): raise the count" >&2; exit 1; }
mr=$(awk -v c="$computed" -v s="$miss_secs" 'BEGIN {print c/s}')
p50=$(awk '$1=="50%" {print $2}' <<<"$out")
p99=$(awk '$1=="99%" {print $2}' <<<"$out")
printf 'miss (12 MP JPEG -> 400+ px WebP, distinct URLs, %d connections, %ds): %.1f computations/s (%s requests, %s computations), p50 %s, p99 %s\n' \
  "$miss_conns" "$miss_secs" "$mr" "$total" "$computed" "$p50" "$p99"
