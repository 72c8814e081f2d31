#!/usr/bin/env bash
# pixgate vs sharp (libvips) on the same photos, same options, one thread each, in one run.
#
#   bash benches/compare.sh            # photos from ../shared/fixtures/photos
#   PIXGATE_PHOTOS=/dir bash benches/compare.sh
#
# Installs sharp with npm into target/sharp-bench when missing (needs node + npm). The Rust
# side (benches/pipeline.rs) drives sharp through benches/sharp_bench.mjs and alternates the two
# run by run, so both see the same machine conditions (a shared VM drifts by tens of percent
# over seconds). Prints ms per image for both (medians), the ratio pixgate/sharp, output sizes,
# T1 PSNR against a full-decode Lanczos3 reference for both outputs, peak memory, and T1
# throughput with two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS="${PIXGATE_PHOTOS:-$(pwd)/../shared/fixtures/photos}"
SHARP_DIR="$(pwd)/target/sharp-bench"
OUT="$(pwd)/target/compare"
SHARP_VERSION="${SHARP_VERSION:-0.35}"
mkdir -p "$SHARP_DIR" "$OUT"
if ! (cd "$SHARP_DIR" && node -e "require('sharp')" >/dev/null 2>&1); then
  echo "installing sharp@$SHARP_VERSION into $SHARP_DIR" >&2
  npm install --prefix "$SHARP_DIR" --no-audit --no-fund --loglevel=error "sharp@$SHARP_VERSION" >&2
fi
# Same encoder effort on both sides (pixgate's defaults; override with the PIXGATE__ variables).
WEBP_METHOD="${PIXGATE__ENCODE__WEBP_METHOD:-4}"
case "${PIXGATE__ENCODE__PNG_COMPRESSION:-fast}" in
  fast) PNG_LEVEL=1 ;; balanced) PNG_LEVEL=6 ;; high) PNG_LEVEL=9 ;;
esac
cargo build --release --bench pipeline >&2
PIXGATE_PHOTOS="$PHOTOS" PIXGATE_WEBP_METHOD="$WEBP_METHOD" PIXGATE_SHARP_DIR="$SHARP_DIR" \
  PIXGATE_COMPARE="$OUT" PIXGATE_PNG_LEVEL="$PNG_LEVEL" cargo bench -q --bench pipeline
