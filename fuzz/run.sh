#!/usr/bin/env bash
# Long fuzz runs: each target (default: all) for SECS seconds (default 600) under libFuzzer
# with AddressSanitizer, starting from a scratch copy of its committed corpus (the committed
# one stays minimal; `cargo fuzz cmin` before adding finds to it). Prints one row per target:
# executions, executions per second, coverage (edges `cov`, features `ft`), corpus size,
# peak RSS, crashes. Crashes land in fuzz/artifacts/{target}/.
#
#   bash fuzz/run.sh [SECS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take the -Z flags cargo-fuzz passes. SANITIZER=none runs without ASan (faster).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(options signature probe decode exif_icc multipart jwt jwks audit_chain zip)
export RUSTC_BOOTSTRAP=1
san=${SANITIZER:-address}
cargo fuzz build -s "$san" -O >&2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%-12s %12s %9s %7s %7s %7s %8s %s\n' target execs exec/s cov ft corpus rss_mb crashes
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  cp corpus/"$t"/* "$scratch/$t/"
  log="$scratch/$t.log"
  set +e
  cargo fuzz run -s "$san" -O "$t" "$scratch/$t" -- -max_total_time="$secs" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 -artifact_prefix="artifacts/$t/" > "$log" 2>&1
  rc=$?
  set -e
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\).*/\1/p')
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-12s %12s %9s %7s %7s %7s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$crashes"
  if [ "$rc" != 0 ]; then
    echo "  $t exited $rc; last lines:" >&2
    grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -5 >&2 || tail -5 "$log" >&2
  fi
done
