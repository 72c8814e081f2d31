#!/usr/bin/env bash
# AVIF output: pixgate's rav1e at several speeds against sharp's aom at several efforts and
# qualities, on the 12 MP JPEG -> 800 px, in one run. pixgate through a release server (whole
# requests, best of 3), sharp in-process (engine, single thread, best of 3); every output's
# bytes and PSNR against one libvips Lanczos3 reference (compare bytes and PSNR, not the
# quality number: the encoders' scales differ). How the default encode.avif_speed was chosen.
#
#   cargo build --release && bash benches/avif.sh [SPEEDS...]     # default: 6 8 9 10
set -euo pipefail
cd "$(dirname "$0")/.."
photo=$(pwd)/${PHOTO:-../shared/fixtures/photos/photo_4000x3000_q90.jpg}
bin=target/release/pixgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
speeds=("$@")
[ ${#speeds[@]} -gt 0 ] || speeds=(6 8 9 10)
SHARP_DIR="$(pwd)/target/sharp-bench"
if ! (cd "$SHARP_DIR" 2>/dev/null && node -e "require('sharp')" >/dev/null 2>&1); then
  mkdir -p "$SHARP_DIR"
  npm install --prefix "$SHARP_DIR" --no-audit --no-fund --loglevel=error "sharp@0.35" >&2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

export PIXGATE__SIGNING__KEYS=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__SIGNING__SALTS=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_HS256_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PIXGATE__AUTH__JWT_ISSUER=bench PIXGATE__AUTH__JWT_AUDIENCE=bench
export PIXGATE__LOG__LEVEL=error PIXGATE__CACHE__DERIVED=false

for speed in "${speeds[@]}"; do
  work=$(mktemp -d)
  PIXGATE__SERVER__LISTEN=127.0.0.1:0 PIXGATE__STORAGE__FS_ROOT="$work/data" \
    PIXGATE__ENCODE__AVIF_SPEED="$speed" "$bin" serve > "$work/out" 2> "$work/err" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
  base=$(sed -n 's/^pixgate listening on //p' "$work/out")
  token=$("$bin" token --sub bench --role editor)
  id=$(curl -s -X POST "$base/v1/images" -H "Authorization: Bearer $token" \
    -H "Content-Type: image/jpeg" --data-binary @"$photo" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p')
  best=999
  for i in 1 2 3; do # distinct widths: every request a miss
    t=$(curl -s -o /dev/null -w '%{time_total}' "$base$("$bin" sign "/rs:fit:80$i:0/f:avif/q:80/plain/$id")")
    best=$(python3 -c "print(min($best, $t))")
  done
  curl -s -o "$out/pixgate_speed${speed}_q80_$(python3 -c "print(int($best*1000))")ms.avif" \
    "$base$("$bin" sign "/rs:fit:800:0/f:avif/q:80/plain/$id")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$work"
done

node - "$SHARP_DIR" "$photo" "$out" <<'JS'
const [sharpDir, photo, out] = process.argv.slice(2);
const { createRequire } = require('node:module');
const { readFileSync, readdirSync } = require('node:fs');
const sharp = createRequire(sharpDir + '/node_modules/x.js')('sharp');
sharp.concurrency(1); sharp.cache(false);
(async () => {
  const src = readFileSync(photo);
  const ref = await sharp(src).resize({ width: 800, kernel: 'lanczos3', fastShrinkOnLoad: false })
    .raw().toBuffer({ resolveWithObject: true });
  const psnr = async (buf) => {
    const { data, info } = await sharp(buf).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    if (info.width !== ref.info.width || info.height !== ref.info.height) return NaN;
    let s = 0;
    for (let i = 0; i < data.length; i++) { const d = data[i] - ref.data[i]; s += d * d; }
    return 10 * Math.log10(255 * 255 / (s / data.length));
  };
  const row = async (name, buf, ms) =>
    console.log(`${name.padEnd(34)} ${String(buf.length).padStart(8)} ${(await psnr(buf)).toFixed(2).padStart(7)} dB ${String(ms).padStart(6)} ms`);
  console.log(`${'encoder, setting'.padEnd(34)} ${'bytes'.padStart(8)} ${'PSNR'.padStart(10)} ${'time'.padStart(9)}`);
  for (const f of readdirSync(out).sort()) {
    const m = f.match(/^pixgate_speed(\d+)_q80_(\d+)ms\.avif$/);
    if (m) await row(`pixgate rav1e speed ${m[1]} q80 (HTTP)`, readFileSync(`${out}/${f}`), m[2]);
  }
  for (const effort of [2, 4]) for (const q of [50, 60, 80]) {
    let best = Infinity, buf;
    for (let i = 0; i < 3; i++) {
      const t = process.hrtime.bigint();
      buf = await sharp(src).resize(800).avif({ quality: q, effort }).toBuffer();
      best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e6);
    }
    await row(`sharp aom effort ${effort} q${q} (engine)`, buf, best.toFixed(0));
  }
})();
JS
