#!/usr/bin/env bash
# `pixgate import` throughput and memory on this machine: a private Garage with a source bucket
# of real photos (JPEGs cut from the 12 MP fixture at 800–2400 px, ~0.1–1 MB each, plus the
# 12 MP original itself) under users/{owner}/…, imported into pixgate's own buckets by copy, then
# into a second set of buckets in place (`--in-place`: stubs instead of copies); then the same
# photos from a directory into filesystem storage. Prints objects/s, MB/s and the
# import process's peak RSS (GNU time) per run, and checks every object was imported.
#
#   bash benches/import.sh            # 240 photos, --jobs 4
#   N=600 JOBS=2 bash benches/import.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-240}
jobs=${JOBS:-4}
photo=${PHOTO:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
[ -f "$photo" ] || { echo "no $photo" >&2; exit 1; }
cargo build --release --locked --bin pixgate >&2
bin=$PWD/target/release/pixgate
# shellcheck source=benches/lib.sh
. benches/lib.sh
need_debs time:/usr/bin/time curl:curl

export PIXGATE__SIGNING__KEYS=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__SALTS=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=warn

# The photos: cut by a pixgate on the embedded storage (release build, same encoder).
mkdir -p "$work/photos"
(
  export PIXGATE__SERVER__LISTEN=127.0.0.1:0 PIXGATE__STORAGE__FS_ROOT="$work/cut"
  export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=1000000 PIXGATE__LIMITS__UPLOADS_PER_HOUR=1000
  "$bin" serve > "$work/cut.out" 2> "$work/cut.log" &
  echo $! > "$work/cut.pid"
)
pids+=("$(cat "$work/cut.pid")")
for _ in $(seq 200); do grep -q "listening on" "$work/cut.out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^pixgate listening on //p' "$work/cut.out")
tok=$("$bin" token --sub cutter --role editor)
id=$(curl -sf -H "authorization: Bearer $tok" -H "content-type: image/jpeg" --data-binary @"$photo" "$base/v1/images" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for i in $(seq 0 $((n - 1))); do
  w=$((800 + (i * 7) % 1600))
  owner=user$((i % 8))
  mkdir -p "$work/photos/users/$owner"
  if [ $((i % 40)) = 39 ]; then
    cp "$photo" "$work/photos/users/$owner/$(printf %05d "$i").jpg"
  else
    curl -sf "$base$("$bin" sign "/w:$w/q:85/f:jpg/plain/$id")" -o "$work/photos/users/$owner/$(printf %05d "$i").jpg"
  fi
done
kill "$(cat "$work/cut.pid")" 2>/dev/null || true
bytes=$(du -sb "$work/photos" | cut -f1)
echo "# $n photos, $((bytes / 1000000)) MB, --jobs $jobs, $(nproc) cores ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

# Source and target buckets on one Garage (the copy reads and writes the same service).
start_garage src px-originals px-derived px-audit pi-originals pi-derived pi-audit
( cd "$work/photos" && find . -type f | sed 's|^\./||' ) | while read -r k; do
  curl -sf -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:garage:s3" --user "$GARAGE_KEY_ID:$GARAGE_SECRET" \
    -T "$work/photos/$k" "$GARAGE_S3/src/$k" > /dev/null
done

run() { # $1 = label, then the import's arguments
  local label=$1; shift
  local t0 t1 out rss
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$bin" import "$@" --owner-pattern 'users/{owner}/**' \
    --jobs "$jobs" > "$work/import.out" 2> "$work/import.err" || { tail -5 "$work/import.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  out=$(tail -1 "$work/import.out")
  local imported; imported=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["summary"]["run"]["imported"])' "$out")
  [ "$imported" = "$n" ] || { echo "$label: imported $imported of $n" >&2; echo "$out" >&2; exit 1; }
  rss=$(cat "$work/rss")
  python3 -c '
import sys
label, n, b, t0, t1, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
s = t1 - t0
print(f"{label:<28} {n / s:7.1f} objects/s {b / s / 1e6:7.1f} MB/s   {s:6.1f} s   peak RSS {rss / 1024:6.0f} MiB")
' "$label" "$n" "$bytes" "$t0" "$t1" "$rss"
}

(
  export PIXGATE__STORAGE__BACKEND=s3 PIXGATE__STORAGE__S3_ENDPOINT="$GARAGE_S3"
  export PIXGATE__STORAGE__S3_REGION=garage PIXGATE__STORAGE__S3_FORCE_PATH_STYLE=true
  export PIXGATE__STORAGE__S3_BUCKET=px-originals PIXGATE__STORAGE__S3_DERIVED_BUCKET=px-derived
  export PIXGATE__STORAGE__S3_AUDIT_BUCKET=px-audit PIXGATE__STORAGE__FS_ROOT="$work/s3-local"
  export AWS_ACCESS_KEY_ID=$GARAGE_KEY_ID AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET AWS_EC2_METADATA_DISABLED=true
  run "S3 -> S3 (Garage), copy" "s3://src/"
  export PIXGATE__STORAGE__S3_BUCKET=pi-originals PIXGATE__STORAGE__S3_DERIVED_BUCKET=pi-derived
  export PIXGATE__STORAGE__S3_AUDIT_BUCKET=pi-audit PIXGATE__STORAGE__FS_ROOT="$work/s3-local-inplace"
  run "S3 (Garage), in place" "s3://src/" --in-place
)
(
  export PIXGATE__STORAGE__FS_ROOT="$work/fs"
  run "directory -> fs, copy" "$work/photos"
)
