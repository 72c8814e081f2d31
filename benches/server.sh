#!/usr/bin/env bash
# Through-the-server benchmark: a real release pixgate on the fs backend, one client (curl).
# Reports, in one run: upload time of the 12 MP JPEG, transform misses (each URL distinct, so
# each is a full fetch + decode + resize + encode), and memory-cache hits of the same URLs.
#
#   cargo build --release && bash benches/server.sh [PHOTO] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
photo=${1:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
n=${2:-9}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$photo" ] || { echo "photo not found: $photo" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
export PIXGATE__SERVER__LISTEN=127.0.0.1:0
export PIXGATE__STORAGE__FS_ROOT="$work/data"
export PIXGATE__SIGNING__KEYS=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__SALTS=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=warn PIXGATE__TRANSFORM__WORKERS=${WORKERS:-2}
"$bin" serve > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^pixgate listening on //p' "$work/out")

token=$("$bin" token --sub bench --role editor)
up=$(curl -s -o "$work/meta.json" -w '%{time_total}' -X POST "$base/v1/images" \
  -H "Authorization: Bearer $token" -H "Content-Type: image/jpeg" --data-binary @"$photo")
id=$(sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' "$work/meta.json")
[ -n "$id" ] || { cat "$work/meta.json"; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # $1 = label, $2 = format, $3 = width base
  local misses=() hits=()
  for i in $(seq 0 $((n - 1))); do
    local w=$(( $3 + i ))
    local path; path=$("$bin" sign "/rs:fit:$w:0/f:$2/plain/$id")
    misses+=("$(curl -s -o /dev/null -w '%{time_total}' "$base$path")")
    hits+=("$(curl -s -o /dev/null -w '%{time_total}' "$base$path")")
  done
  printf '%-34s miss median %7.1f ms   hit median %6.2f ms\n' "$1" \
    "$(printf '%s\n' "${misses[@]}" | median | awk '{print $1*1000}')" \
    "$(printf '%s\n' "${hits[@]}" | median | awk '{print $1*1000}')"
}
echo "pixgate through the server ($(basename "$photo"), $n distinct URLs each, curl on loopback)"
printf '%-34s %7.1f ms\n' "upload (validate + sha256 + store)" "$(echo "$up" | awk '{print $1*1000}')"
run "-> ~800 px WebP q80" webp 800
run "-> ~800 px JPEG q80" jpg 800
run "-> ~300 px PNG" png 300
