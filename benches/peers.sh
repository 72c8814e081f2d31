#!/usr/bin/env bash
# pixgate against the image servers a user would pick instead, over HTTP on this machine, in
# one run: ipx 3 (sharp/libvips, npm) and thumbor 7.7 (Pillow, pip in a venv), installed into
# target/peers when missing. imgforge (libvips >= 8.15) is skipped with a note when the system
# libvips is older (Debian 12 has 8.14, with which every imgforge encode fails).
#
# For each task T1-T5 the servers are asked in turn, request by request (alternated, so all
# see the same machine conditions), each request a distinct width (a miss everywhere: ipx and
# thumbor keep no results; pixgate would otherwise answer from its cache). Each server runs its
# own defaults, as a user would get them; the table prints every output's bytes and PSNR against
# a full-decode Lanczos3 reference (libvips), so speed is read at the output each one gives.
#
# Then, one server at a time on T1 (distinct URLs): miss throughput with 4 connections and an
# overload of 32 connections (p99 of the 200s, 503s, peak RSS of the server process, through
# benches/overload.py); and hits: pixgate serving one URL from its cache against nginx serving
# the same bytes as a file (wrk; ipx and thumbor keep no results here).
#
#   cargo build --release && bash benches/peers.sh
#   ROUNDS (9) latency rounds per task; MISS_SECS (20), STORM_SECS (20), HIT_SECS (10)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
photos="$(cd "${PIXGATE_PHOTOS:-../shared/fixtures/photos}" && pwd)"
rounds=${ROUNDS:-9}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
peers=target/peers
mkdir -p "$peers"
if ! [ -x "$peers/ipx/node_modules/.bin/ipx" ]; then
  echo ">> installing ipx 3 (npm) into $peers/ipx" >&2
  mkdir -p "$peers/ipx"
  (cd "$peers/ipx" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error ipx@3 >&2)
fi
if ! [ -x "$peers/thumbor-venv/bin/thumbor" ]; then
  echo ">> installing thumbor 7.7 (pip, venv) into $peers/thumbor-venv" >&2
  python3 -m venv "$peers/thumbor-venv"
  "$peers/thumbor-venv/bin/pip" install -q "thumbor==7.7.*" >&2
fi
vips=$(pkg-config --modversion vips 2>/dev/null || echo none)
echo "imgforge: skipped (needs libvips >= 8.15; this machine has: $vips)"

# shellcheck source=benches/lib.sh
. benches/lib.sh

# pixgate: release build, fs backend, 2 workers, defaults otherwise.
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
salt=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__KEYS=$key PIXGATE__SIGNING__SALTS=$salt
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench PIXGATE__LOG__LEVEL=error
export PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE=100000000 PIXGATE__LIMITS__REQUESTS_PER_MINUTE=100000000
export PIXGATE__LIMITS__TRANSFORMS_PER_HOUR=100000000 PIXGATE__LIMITS__UPLOADS_PER_HOUR=100000000
pg_port=$(free_port)
PIXGATE__SERVER__LISTEN=127.0.0.1:$pg_port PIXGATE__STORAGE__FS_ROOT="$work/data" \
  PIXGATE__TRANSFORM__WORKERS=2 "$bin" serve > "$work/pixgate.out" 2> "$work/pixgate.err" &
pids+=($!); pid_pixgate=$!
# ipx: the photos directory, its defaults.
ipx_port=$(free_port)
(cd "$photos" && PORT=$ipx_port HOST=127.0.0.1 exec "$root/$peers/ipx/node_modules/.bin/ipx" serve --dir "$photos" > "$work/ipx.out" 2>&1) &
pids+=($!); pid_ipx=$!
# thumbor: file loader on the photos directory, unsafe URLs, one process.
cat > "$work/thumbor.conf" <<CONF
LOADER = 'thumbor.loaders.file_loader'
FILE_LOADER_ROOT_PATH = '$photos'
ALLOW_UNSAFE_URL = True
RESULT_STORAGE = None
CONF
th_port=$(free_port)
"$peers/thumbor-venv/bin/thumbor" -p "$th_port" -c "$work/thumbor.conf" -l error > "$work/thumbor.out" 2>&1 &
pids+=($!); pid_thumbor=$!
wait_port "$pg_port"; wait_port "$ipx_port"; wait_port "$th_port"

token=$("$bin" token --sub bench --role editor)
upload() {
  curl -s -X POST "http://127.0.0.1:$pg_port/v1/images" -H "Authorization: Bearer $token" \
    -H "Content-Type: $2" --data-binary @"$photos/$1" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p'
}
id12=$(upload photo_4000x3000_q90.jpg image/jpeg)
idpng=$(upload photo_2000x2000.png image/png)
idprog=$(upload src_elephants_5640x3172_progressive.jpg image/jpeg)
[ -n "$id12" ] && [ -n "$idpng" ] && [ -n "$idprog" ] || { cat "$work/pixgate.err" >&2; exit 1; }

python3 - "$key" "$salt" "$pg_port" "$ipx_port" "$th_port" "$rounds" "$work" "$id12" "$idpng" "$idprog" <<'PY'
import base64, hashlib, hmac, json, sys, time, urllib.request
key, salt = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
pg, ipx, th, rounds, work = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
ids = {"jpg12": sys.argv[8], "png": sys.argv[9], "prog": sys.argv[10]}
files = {"jpg12": "photo_4000x3000_q90.jpg", "png": "photo_2000x2000.png", "prog": "src_elephants_5640x3172_progressive.jpg"}
def signed(path):
    sig = base64.urlsafe_b64encode(hmac.new(key, salt + path.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"/{sig}{path}"
# task: (source, pixgate options, ipx modifiers, thumbor path, extension); {w} is the width.
tasks = {
    "T1": ("jpg12", "rs:fit:{w}:0/f:jpg/q:80", "w_{w},f_jpeg,q_80", "{w}x0/filters:quality(80)", "jpg"),
    "T2": ("jpg12", "rs:fit:{w}:0/f:webp/q:80", "w_{w},f_webp,q_80", "{w}x0/filters:format(webp):quality(80)", "webp"),
    "T3": ("jpg12", "rs:fill:{w}:{w}/f:jpg/q:80", "s_{w}x{w},fit_cover,f_jpeg,q_80", "{w}x{w}/filters:quality(80)", "jpg"),
    "T4": ("png", "rs:fit:{w}:0/f:png", "w_{w},f_png", "{w}x0/filters:format(png)", "png"),
    "T5": ("prog", "rs:fit:{w}:0/f:webp/q:80", "w_{w},f_webp,q_80", "{w}x0/filters:format(webp):quality(80)", "webp"),
}
base_w = {"T1": 800, "T2": 800, "T3": 300, "T4": 400, "T5": 800}
def url(server, task, w):
    src, p, i, t, _ = tasks[task]
    if server == "pixgate":
        return f"http://127.0.0.1:{pg}" + signed(f"/{p.format(w=w)}/plain/{ids[src]}")
    if server == "ipx":
        return f"http://127.0.0.1:{ipx}/{i.format(w=w)}/{files[src]}"
    return f"http://127.0.0.1:{th}/unsafe/{t.format(w=w)}/{files[src]}"
def fetch(u):
    t = time.perf_counter()
    with urllib.request.urlopen(u, timeout=120) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, body
servers = ["pixgate", "ipx", "thumbor"]
results = {}
for task in tasks:
    w0 = base_w[task]
    # Warm-up and the output kept for PSNR: the task's own width.
    for s in servers:
        _, body = fetch(url(s, task, w0))
        open(f"{work}/{s}_{task}.{tasks[task][4]}", "wb").write(body)
        results.setdefault(task, {})[s] = {"ms": [], "bytes": len(body)}
    for r in range(1, rounds + 1):
        order = servers[r % 3:] + servers[:r % 3]
        for s in order:
            ms, _ = fetch(url(s, task, w0 + r))
            results[task][s]["ms"].append(ms)
json.dump(results, open(f"{work}/results.json", "w"))
# Load runs (T1 at widths 501-999, all a 1/4-scale decode, times qualities 70-89: every
# request a distinct URL, so a miss everywhere): paths per server, shuffled alike.
import random
combos = [(w, q) for w in range(501, 1000) for q in range(70, 90)]
random.Random(20).shuffle(combos)
t1 = {"pixgate": "/rs:fit:{w}:0/f:jpg/q:{q}/plain/" + ids["jpg12"],
      "ipx": "/w_{w},f_jpeg,q_{q}/" + files["jpg12"],
      "thumbor": "/unsafe/{w}x0/filters:quality({q})/" + files["jpg12"]}
for s in servers:
    half = len(combos) // 2
    for name, part in (("miss", combos[:half]), ("storm", combos[half:])):
        with open(f"{work}/{name}_{s}", "w") as f:
            for w, q in part:
                path = t1[s].format(w=w, q=q)
                f.write((signed(path) if s == "pixgate" else path) + "\n")
PY

node - "$root/target/sharp-bench" "$photos" "$work" <<'JS'
const [sharpDir, photos, work] = process.argv.slice(2);
const { createRequire } = require('node:module');
const fs = require('node:fs');
let sharp;
try { sharp = createRequire(sharpDir + '/node_modules/x.js')('sharp'); }
catch { sharp = createRequire(process.cwd() + '/target/peers/ipx/node_modules/x.js')('sharp'); }
const results = JSON.parse(fs.readFileSync(`${work}/results.json`));
const files = { T1: 'photo_4000x3000_q90.jpg', T2: 'photo_4000x3000_q90.jpg', T3: null,
  T4: 'photo_2000x2000.png', T5: 'src_elephants_5640x3172_progressive.jpg' };
const ext = { T1: 'jpg', T2: 'webp', T3: 'jpg', T4: 'png', T5: 'webp' };
const median = (v) => { const s = [...v].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
(async () => {
  const servers = ['pixgate', 'ipx', 'thumbor'];
  console.log('task  ' + servers.map((s) => `${s.padStart(9)} ms   bytes  PSNR dB`).join('  |'));
  for (const task of Object.keys(results)) {
    let ref = null;
    const cells = [];
    for (const s of servers) {
      const r = results[task][s];
      let p = '-';
      if (files[task]) {
        const out = fs.readFileSync(`${work}/${s}_${task}.${ext[task]}`);
        const o = await sharp(out).removeAlpha().raw().toBuffer({ resolveWithObject: true });
        ref = await sharp(fs.readFileSync(`${photos}/${files[task]}`))
          .resize({ width: o.info.width, height: o.info.height, fit: 'fill', kernel: 'lanczos3', fastShrinkOnLoad: false })
          .removeAlpha().raw().toBuffer();
        let sum = 0;
        for (let i = 0; i < o.data.length; i++) { const d = o.data[i] - ref[i]; sum += d * d; }
        p = (10 * Math.log10(255 * 255 / (sum / o.data.length))).toFixed(2);
      }
      cells.push(`${median(r.ms).toFixed(1).padStart(12)} ${String(r.bytes).padStart(7)} ${p.padStart(8)}`);
    }
    console.log(`${task.padEnd(5)} ` + cells.join('  |'));
  }
})();
JS

# --- Throughput and overload (one server at a time, the others idle), then hits.
miss_secs=${MISS_SECS:-20} storm_secs=${STORM_SECS:-20}
echo
echo "T1 load (12 MP JPEG -> 501-999 px JPEG, distinct URLs): miss throughput with 4 connections for ${miss_secs}s;"
echo "overload with 32 connections for ${storm_secs}s (p99 of the 200s; RSS of the server process before the"
echo "overload and its peak: pixgate's includes its result cache, filled by the runs before)"
printf '%-9s %12s %10s %10s %8s %8s %20s\n' server "miss req/s" "miss p99" "32c ok/s" "32c 503" "32c p99" "RSS MiB before→peak"
declare -A port=([pixgate]=$pg_port [ipx]=$ipx_port [thumbor]=$th_port)
declare -A pid=([pixgate]=$pid_pixgate [ipx]=$pid_ipx [thumbor]=$pid_thumbor)
for s in pixgate ipx thumbor; do
  miss=$(python3 benches/overload.py --port "${port[$s]}" --urls "$work/miss_$s" --conns 4 --secs "$miss_secs")
  storm=$(python3 benches/overload.py --port "${port[$s]}" --urls "$work/storm_$s" --conns 32 --secs "$storm_secs" --pid "${pid[$s]}")
  python3 - "$s" "$miss" "$storm" <<'PY'
import json, sys
s, m, o = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{s:<9} {m['ok_per_sec']:>12} {m['p99_ms']:>10} {o['ok_per_sec']:>10} {o['status'].get('503', 0):>8} "
      f"{o['p99_ms']:>8} {str(o['rss_before_mib']) + ' → ' + str(o['peak_rss_mib']):>20}")
PY
done

# Hits: pixgate answering one URL from its memory cache against nginx serving the same bytes
# (ipx and thumbor, as configured here, keep no results: every request of theirs is a miss).
need_debs wrk:wrk nginx:/usr/sbin/nginx
# Signed with the keys exported above.
hit_path=$("$bin" sign "/rs:fit:800:0/f:webp/q:80/plain/$id12")
mkdir -p "$work/www"
curl -sf -o "$work/www/hit.webp" "http://127.0.0.1:$pg_port$hit_path"
ng_port=$(free_port)
nginx_serve "$work/www" "$ng_port"
hit_secs=${HIT_SECS:-10}
p_runs=() n_runs=()
for _ in 1 2 3; do
  p_runs+=("$(wrk_rps "http://127.0.0.1:$pg_port$hit_path" "$hit_secs" 32)")
  n_runs+=("$(wrk_rps "http://127.0.0.1:$ng_port/hit.webp" "$hit_secs" 32)")
done
pm=$(printf '%s\n' "${p_runs[@]}" | median)
nm=$(printf '%s\n' "${n_runs[@]}" | median)
echo
printf 'hits (800 px WebP, %s bytes, wrk 32 connections, median of 3 alternated %ss rounds): pixgate %.0f req/s, nginx %.0f req/s (%.2fx); ipx, thumbor: no result cache\n' \
  "$(stat -c %s "$work/www/hit.webp")" "$hit_secs" "$pm" "$nm" "$(awk -v a="$pm" -v b="$nm" 'BEGIN {print a/b}')"
