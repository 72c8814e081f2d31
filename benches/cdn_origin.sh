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
# MISS_CONNS (4), HIT_WIDTH (800), LOG_PIPE (below), PIXGATE_BIN (target/release/pixgate: another build to compare). LOGS=1 logs every request on both sides (pixgate at `info`,
# nginx's access log to a file); by default neither does. pixgate always writes its audit
# trail (one event per request, archived under $work/data/audit) and, by default, the `audit`
# log stream; AUDIT_LOG=0 turns that stream off (`audit=off`), keeping the archive. Installs
# nginx and wrk from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
photo=${1:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
rounds=${ROUNDS:-3} secs=${SECS:-10} conns=${CONNS:-32}
miss_secs=${MISS_SECS:-20} miss_conns=${MISS_CONNS:-4}
bin=${PIXGATE_BIN:-target/release/pixgate}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$photo" ] || { echo "photo not found: $photo" >&2; exit 1; }

# shellcheck source=benches/lib.sh
. benches/lib.sh
need_debs wrk:wrk nginx:/usr/sbin/nginx
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
if [ -n "${LOGS:-}" ]; then log_level=info; else log_level=warn; fi
if [ "${AUDIT_LOG:-1}" = 0 ]; then log_level="$log_level,audit=off"; fi
export PIXGATE__LOG__LEVEL=$log_level PIXGATE__TRANSFORM__WORKERS=2
export PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=1000000000
export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=1000000000
export PIXGATE__LIMITS__UPLOADS_PER_HOUR=1000000000
# LOG_PIPE=1: standard error through a pipe to a reader, as under a container runtime or
# systemd (each write wakes the reader), instead of into a file.
if [ -n "${LOG_PIPE:-}" ]; then
  "$bin" serve > "$work/out" 2> >(cat > "$work/err") &
else
  "$bin" serve > "$work/out" 2> "$work/err" &
fi
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
curl -sf -o "$work/www/hit.webp" "$base$hit_path"
chmod 644 "$work/www/hit.webp"
curl -sf -o /dev/null "$base$hit_path"
bytes=$(stat -c %s "$work/www/hit.webp")

# --- nginx: the same bytes as a static file (benches/lib.sh).
nport=$(free_port)
access_log=${LOGS:+$work/access.log}
if [ -n "${LOGS:-}" ] && [ -n "${LOG_PIPE:-}" ]; then
  # nginx's access log through a pipe too, as a container's /dev/stdout would be.
  mkfifo "$work/access.fifo"
  cat "$work/access.fifo" > "$work/access.log" &
  pids+=($!)
  access_log=$work/access.fifo
fi
nginx_serve "$work/www" "$nport" $access_log
curl -s -o "$work/nginx.webp" "http://127.0.0.1:$nport/hit.webp"
cmp -s "$work/www/hit.webp" "$work/nginx.webp" \
  || { echo "nginx does not serve the same bytes" >&2; exit 1; }

echo "CDN-origin benchmark: $(nproc) cores, wrk -t1 -c$conns, ${secs}s x $rounds alternating rounds"
echo "hit body: ${bytes} bytes ($hit_w px WebP of $(basename "$photo"))"
p_runs=() n_runs=()
for r in $(seq "$rounds"); do
  p=$(wrk_rps "$base$hit_path" "$secs" "$conns"); p_runs+=("$p")
  n=$(wrk_rps "http://127.0.0.1:$nport/hit.webp" "$secs" "$conns"); n_runs+=("$n")
  printf '  round %d: pixgate %10.0f req/s   nginx %10.0f req/s\n' "$r" "$p" "$n"
done
pm=$(printf '%s\n' "${p_runs[@]}" | median)
nm=$(printf '%s\n' "${n_runs[@]}" | median)
printf 'cache hit, median: pixgate %.0f req/s, nginx %.0f req/s, ratio %.2fx (goal >= 0.95x, issue 20)\n' \
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
