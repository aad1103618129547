#!/usr/bin/env bash
# Build the `scan` fuzz target and fuzz it for N seconds (default 60), seeded
# with pydicom's test files. Exits non-zero on a crash, timeout or OOM; the
# input that caused it is left in fuzz/artifacts/scan/.
#
#   rust/core/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes
# nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets stable accept them.
set -euo pipefail

seconds="${1:-60}"
fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="$fuzz_dir/corpus/scan"
log="$fuzz_dir/artifacts/scan.log"
export RUSTC_BOOTSTRAP=1

# The seeds: every DICOM file pydicom tests itself with (Part 10 with and without
# meta, both endians, implicit VR, deflated, encapsulated, sequences, charsets).
pydicom_data="$("${PYTHON:-python3}" -c \
    'import os, pydicom.data; print(os.path.dirname(pydicom.data.__file__))')"
mkdir -p "$corpus" "$fuzz_dir/artifacts/scan"
find "$pydicom_data/test_files" "$pydicom_data/charset_files" -type f \
    \( -name '*.dcm' -o ! -name '*.*' \) -print0 |
    while IFS= read -r -d '' seed; do
        # Named by content, as libFuzzer names what it adds: copies dedupe themselves.
        cp "$seed" "$corpus/$(sha1sum <"$seed" | cut -c1-40)"
    done

cd "$fuzz_dir/.."  # cargo fuzz finds ./fuzz from the crate it fuzzes
cargo fuzz build scan
# -timeout: a scan of a few hundred KB takes milliseconds; seconds mean a hang.
if cargo fuzz run scan "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$log"; then
    status=0
else
    status=$?
fi

echo "--- fuzz summary (full log: $log)"
grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::)' "$log" || true
if [ "$status" -ne 0 ]; then
    echo "fuzzing FAILED (exit $status): reproducer in $fuzz_dir/artifacts/scan/" >&2
    grep -E -A3 'panicked at|ERROR: libFuzzer|SUMMARY:|Test unit written' "$log" >&2 || true
fi
exit "$status"
