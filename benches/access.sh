#!/usr/bin/env bash
# What the access check costs on the hot path: bearer transforms of one image served from
# memory, as its owner (decided without I/O) and as users who reach it through a direct share,
# a team's share, and a collection share — measured side by side in one run (wrk, keep-alive,
# the same URL and bytes for everyone; rounds alternate between principals). A stranger's
# refusal (404) is measured too. Release pixgate on the fs backend.
#
#   cargo build --release && bash benches/access.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
secs=${1:-5}
rounds=${2:-3}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
need_debs wrk:wrk curl:curl

export PIXGATE__SERVER__LISTEN=127.0.0.1:0
export PIXGATE__STORAGE__FS_ROOT="$work/data"
export PIXGATE__SIGNING__KEYS=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__SALTS=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=warn PIXGATE__TRANSFORM__WORKERS=2
# Wide limits: the bench measures the access check, not the rate limiter's refusals.
export PIXGATE__LIMITS__REQUESTS_PER_MINUTE=100000000 PIXGATE__LIMITS__AUTH_FAILURES_PER_IP=100000000
"$bin" serve > "$work/out" 2> "$work/err" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
base=$(sed -n 's/^pixgate listening on //p' "$work/out")
[ -n "$base" ] || { cat "$work/err"; exit 1; }

tok() { "$bin" token --sub "$1" --role editor; }
owner=$(tok alice); direct=$(tok sam); member=$(tok tia); teamadm=$(tok tom); reader=$(tok cora); stranger=$(tok eve)
api() { # $1 = token, $2 = method, $3 = path, $4 = JSON body
  curl -sf -X "$2" "$base$3" -H "Authorization: Bearer $1" -H "Content-Type: application/json" -d "$4"
}
json_id() { sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -1; }
id=$(curl -sf -X POST "$base/v1/images" -H "Authorization: Bearer $owner" -H "Content-Type: image/png" \
  --data-binary @tests/fixtures/alpha_320x240.png | json_id)
team=$(api "$teamadm" POST /v1/teams '{"name":"bench"}' | json_id)
api "$teamadm" POST "/v1/teams/$team/members" '{"user":"tia","role":"viewer"}' > /dev/null
api "$teamadm" POST "/v1/teams/$team/members" '{"user":"alice","role":"viewer"}' > /dev/null
api "$owner" POST "/v1/images/$id/shares" '{"user":"sam","access":"read"}' > /dev/null
api "$owner" POST "/v1/images/$id/shares" "{\"team\":\"$team\",\"access\":\"read\"}" > /dev/null
col=$(api "$owner" POST /v1/collections '{"title":"bench"}' | json_id)
api "$owner" POST "/v1/collections/$col/items" "{\"image\":\"$id\"}" > /dev/null
api "$owner" POST "/v1/collections/$col/shares" '{"user":"cora","access":"read"}' > /dev/null

url="$base/_/rs:fit:160:0/plain/$id"
for t in "$owner" "$direct" "$member" "$reader"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $t" "$url")
  [ "$code" = 200 ] || { echo "warm-up got $code" >&2; exit 1; }
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $stranger" "$url")" = 404 ]

rps() { # $1 = token, $2 = expected status class (2 or 4)
  local out; out=$(wrk -t1 -c16 -d"${secs}s" -H "Authorization: Bearer $1" "$url")
  if [ "$2" = 2 ] && grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec:/ {print $2}' <<<"$out"
}
declare -A got
labels=(owner direct_share team_share collection_share stranger_404)
tokens=("$owner" "$direct" "$member" "$reader" "$stranger")
classes=(2 2 2 2 4)
for r in $(seq "$rounds"); do
  for i in "${!labels[@]}"; do
    got[${labels[$i]}]+="$(rps "${tokens[$i]}" "${classes[$i]}") "
  done
done
echo "bearer transform, memory hit, one image, wrk -t1 -c16, ${secs}s x $rounds rounds (median req/s)"
own=$(tr ' ' '\n' <<<"${got[owner]}" | grep . | median)
for l in "${labels[@]}"; do
  m=$(tr ' ' '\n' <<<"${got[$l]}" | grep . | median)
  printf '%-18s %10.0f req/s  (%.2fx the owner)   runs: %s\n' "$l" "$m" "$(awk -v a="$m" -v b="$own" 'BEGIN {print a/b}')" "${got[$l]}"
done
