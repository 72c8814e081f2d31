#!/usr/bin/env bash
# Two builds of pixgate side by side through the server, alternated request by request, so
# both see the same machine conditions: a change that should not change speed (a refactor)
# shows it does not. Both servers run on the fs backend with the same settings; each gets the
# same photos uploaded; then for every round each server computes the same distinct misses
# (T1 12 MP JPEG -> ~800 px JPEG, T2 -> ~800 px WebP, T3 -> 300x300 cover JPEG, T4 2000^2 PNG
# -> ~400 px PNG) and serves the same memory hits, A then B then B then A, and so on. Prints
# medians per case and the B/A ratio.
#
#   bash benches/revisions.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Build the two binaries with `cargo build --release` at each revision (a `git worktree` for
# the older one keeps its own target directory).
set -euo pipefail
cd "$(dirname "$0")/.."
a_bin=$(realpath "$1")
b_bin=$(realpath "$2")
rounds=${3:-15}
photos=${PIXGATE_PHOTOS:-$(pwd)/../shared/fixtures/photos}
jpeg="$photos/photo_4000x3000_q90.jpg"
png="$photos/photo_2000x2000.png"
for f in "$a_bin" "$b_bin"; do [ -x "$f" ] || { echo "not executable: $f" >&2; exit 1; }; done

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export PIXGATE__SIGNING__KEYS=$(hex 32) PIXGATE__SIGNING__SALTS=$(hex 16)
export PIXGATE__AUTH__JWT_HS256_SECRET=$(hex 32)
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=warn PIXGATE__TRANSFORM__WORKERS=${WORKERS:-2}
export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=1000000 PIXGATE__LIMITS__UPLOADS_PER_HOUR=1000
export PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=0 PIXGATE__LIMITS__REQUESTS_PER_MINUTE=0

start() { # $1 = name, $2 = binary; sets base_$1
  mkdir -p "$work/$1"
  PIXGATE__SERVER__LISTEN=127.0.0.1:0 PIXGATE__STORAGE__FS_ROOT="$work/$1/data" \
    "$2" serve > "$work/$1/out" 2> "$work/$1/err" &
  pids+=($!)
  for _ in $(seq 200); do grep -q "listening on" "$work/$1/out" 2>/dev/null && break; sleep 0.05; done
  local base; base=$(sed -n 's/^pixgate listening on //p' "$work/$1/out")
  [ -n "$base" ] || { cat "$work/$1/err" >&2; exit 1; }
  eval "base_$1=$base"
}
upload() { # $1 = name, $2 = binary, $3 = file, $4 = type; prints the image id
  local base; eval "base=\$base_$1"
  local token; token=$("$2" token --sub bench --role editor)
  curl -s -X POST "$base/v1/images" -H "Authorization: Bearer $token" \
    -H "Content-Type: $4" --data-binary @"$3" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p'
}
start a "$a_bin"
start b "$b_bin"
ja=$(upload a "$a_bin" "$jpeg" image/jpeg); jb=$(upload b "$b_bin" "$jpeg" image/jpeg)
pa=$(upload a "$a_bin" "$png" image/png); pb=$(upload b "$b_bin" "$png" image/png)
[ -n "$ja" ] && [ -n "$jb" ] && [ -n "$pa" ] && [ -n "$pb" ] || { echo "upload failed" >&2; exit 1; }

# One request: $1 = server, $2 = case, $3 = round; appends "case kind seconds" to its log.
one() {
  local base bin id opts
  eval "base=\$base_$1"
  if [ "$1" = a ]; then bin=$a_bin; else bin=$b_bin; fi
  case $2 in
    T1) id=$([ "$1" = a ] && echo "$ja" || echo "$jb"); opts="rs:fit:$((800 + $3)):0/f:jpg" ;;
    T2) id=$([ "$1" = a ] && echo "$ja" || echo "$jb"); opts="rs:fit:$((800 + $3)):0/f:webp" ;;
    T3) id=$([ "$1" = a ] && echo "$ja" || echo "$jb"); opts="rs:fill:$((300 + $3)):300/f:jpg" ;;
    T4) id=$([ "$1" = a ] && echo "$pa" || echo "$pb"); opts="rs:fit:$((400 + $3)):0/f:png" ;;
  esac
  local path; path=$("$bin" sign "/$opts/plain/$id")
  local miss hit
  miss=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$base$path")
  hit=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$base$path")
  case "$miss $hit" in 200\ *\ 200\ *) ;; *) echo "$1 $2: $miss / $hit" >&2; exit 1 ;; esac
  echo "$2 miss ${miss#* }" >> "$work/$1/times"
  echo "$2 hit ${hit#* }" >> "$work/$1/times"
}
for r in $(seq 1 "$rounds"); do
  for c in T1 T2 T3 T4; do
    if [ $((r % 2)) = 1 ]; then one a "$c" "$r"; one b "$c" "$r"; else one b "$c" "$r"; one a "$c" "$r"; fi
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] * 1000}'; }
printf '%-10s %-5s %12s %12s %8s\n' case kind "A ms" "B ms" "B/A"
for c in T1 T2 T3 T4; do
  for k in miss hit; do
    ma=$(awk -v c="$c" -v k="$k" '$1==c && $2==k {print $3}' "$work/a/times" | median)
    mb=$(awk -v c="$c" -v k="$k" '$1==c && $2==k {print $3}' "$work/b/times" | median)
    printf '%-10s %-5s %12.2f %12.2f %8.3f\n' "$c" "$k" "$ma" "$mb" "$(echo "$mb $ma" | awk '{print $1/$2}')"
  done
done
echo "A: $a_bin"
echo "B: $b_bin"
echo "$rounds rounds, alternated (A B, then B A); medians over distinct misses and their hits"
