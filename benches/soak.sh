#!/usr/bin/env bash
# Soak: a release pixgate under mixed traffic for a fixed time (uploads, hits, misses,
# metadata reads, deletes, 5 % hostile requests), sampling RSS, open fds, threads and p99
# latency every 10 s (benches/soak_load.rs). Ends with a verdict line: RSS slope over the last
# 20 minutes (two thirds of a shorter run) and the fd/thread ranges.
#
#   bash benches/soak.sh fs  [MINUTES]   # filesystem storage, in-process limits
#   bash benches/soak.sh s3  [MINUTES]   # Garage (S3) + Redis, started here on free ports
#
# Defaults: 30 minutes, 8 connections, the 12 MP photo of ../shared/fixtures for the large
# misses. CSV rows and the verdict go to stdout; the server's log to $OUT/server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-fs}
minutes=${2:-30}
conc=${CONCURRENCY:-8}
photo=${PHOTO:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
small=tests/fixtures/photo_320x240.jpg
[ -f "$photo" ] || photo=tests/fixtures/alpha_320x240.png

cargo build --release --locked --bin pixgate >&2
cargo bench --locked --bench soak_load --no-run >&2 2>/dev/null || cargo bench --locked --bench soak_load --no-run >&2
load=$(ls -t target/release/deps/soak_load-* | grep -v '\.d$' | head -1)
bin=target/release/pixgate

# shellcheck source=benches/lib.sh
. benches/lib.sh

export PIXGATE__SERVER__LISTEN=127.0.0.1:0
export PIXGATE__STORAGE__FS_ROOT="$work/data"
export PIXGATE__SIGNING__KEYS=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__SALTS=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=soak PIXGATE__AUTH__JWT_AUDIENCE=soak
export PIXGATE__LOG__LEVEL=warn
# One client from one address: the per-IP and per-user limits would refuse most of the run.
export PIXGATE__LIMITS__REQUESTS_PER_MINUTE=10000000 PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=10000000
export PIXGATE__LIMITS__AUTH_FAILURES_PER_IP=10000000
export PIXGATE__LIMITS__UPLOADS_PER_HOUR=10000000 PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=10000000

if [ "$mode" = s3 ]; then
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no > /dev/null &
  pids+=($!)
  wait_port "$rport"
  start_garage soak-originals soak-derived soak-audit
  key_id=$GARAGE_KEY_ID secret=$GARAGE_SECRET
  export PIXGATE__STORAGE__BACKEND=s3 PIXGATE__STORAGE__S3_ENDPOINT="$GARAGE_S3"
  export PIXGATE__STORAGE__S3_REGION=garage PIXGATE__STORAGE__S3_FORCE_PATH_STYLE=true
  export PIXGATE__STORAGE__S3_BUCKET=soak-originals PIXGATE__STORAGE__S3_DERIVED_BUCKET=soak-derived
  export PIXGATE__STORAGE__S3_AUDIT_BUCKET=soak-audit
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret AWS_EC2_METADATA_DISABLED=true
  export PIXGATE__REDIS__URL="redis://127.0.0.1:$rport/0"
  export PIXGATE__AUDIT__SPOOL_DIR="$work/spool"
fi

"$bin" serve > "$work/out" 2> "${OUT:-$work}/server.log" &
pid=$!
pids+=($pid)
for _ in $(seq 200); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^pixgate listening on //p' "$work/out")
[ -n "$base" ] || { cat "${OUT:-$work}/server.log" >&2; exit 1; }
echo "# soak $mode: ${minutes} min, $conc connections, pixgate pid $pid at $base ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
"$load" --base "$base" --pid "$pid" --secs $((minutes * 60)) --concurrency "$conc" \
  --photo "$photo" --small "$small" 2> "$work/load.err" || { tail -20 "$work/load.err" >&2; exit 1; }
errs=$(grep -c . "$work/load.err" || true)
echo "# load generator error lines: $errs"
[ "$errs" = 0 ] || head -5 "$work/load.err"
