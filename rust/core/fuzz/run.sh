#!/usr/bin/env bash
# Build a fuzz target and fuzz it for N seconds (default 60), seeded with real
# inputs. Exits non-zero on a crash, timeout or OOM; the input that caused it
# is left in fuzz/artifacts/TARGET/.
#
#   rust/core/fuzz/run.sh [SECONDS] [TARGET]
#
# TARGET is `scan` (the Part 10 scanner, the default), `rewrite` (header
# rewriting, the edits chosen by the first byte) or `pdu` (the DICOM Upper
# Layer PDU decoder) or `scp_receiver` (the storage SCP's data plane on an
# established association's bytes).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes
# nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets stable accept them.
set -euo pipefail

seconds="${1:-60}"
target="${2:-scan}"
fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="$fuzz_dir/corpus/$target"
log="$fuzz_dir/artifacts/$target.log"
export RUSTC_BOOTSTRAP=1
mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"

# Seeds are named by content, as libFuzzer names what it adds: copies dedupe themselves.
seed() {
    cp "$1" "$corpus/$(sha1sum <"$1" | cut -c1-40)"
}

case "$target" in
scan | rewrite)
    # Every DICOM file pydicom tests itself with (Part 10 with and without
    # meta, both endians, implicit VR, deflated, encapsulated, sequences, charsets).
    pydicom_data="$("${PYTHON:-python3}" -c \
        'import os, pydicom.data; print(os.path.dirname(pydicom.data.__file__))')"
    find "$pydicom_data/test_files" "$pydicom_data/charset_files" -type f \
        \( -name '*.dcm' -o ! -name '*.*' \) -print0 |
        while IFS= read -r -d '' file; do seed "$file"; done
    ;;
pdu)
    # The PDU streams DCMTK and pynetdicom sent (tests/fixtures/capture.py),
    # behind the target's two configuration bytes: a limit of 16384 (DCMTK's
    # default), fed whole and in 5-byte pieces.
    tmp="$(mktemp)"
    trap 'rm -f "$tmp"' EXIT
    for file in "$fuzz_dir"/../tests/fixtures/*.bin; do
        for config in '\x01\x00' '\x01\x04'; do
            { printf "$config"; cat "$file"; } >"$tmp"
            seed "$tmp"
        done
    done
    ;;
scp_receiver)
    # C-STORE streams of small pydicom test files (command, data set in
    # 16 KiB PDUs, then A-RELEASE-RQ), behind the piece-size byte.
    "${PYTHON:-python3}" - "$corpus" <<'PY'
import hashlib, pathlib, sys
import pydicom.data
from dicomrelay import scan_file
from dicomrelay._native import ReleaseRq, fragment_pdata
from dicomrelay.dicom.dimse import CStoreRq
corpus = pathlib.Path(sys.argv[1])
for name in ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]:
    path = pathlib.Path(pydicom.data.get_testdata_file(name))
    info = scan_file(path)
    rq = CStoreRq(message_id=1, sop_class_uid=info.sop_class_uid, sop_instance_uid=info.sop_instance_uid)
    dataset = path.read_bytes()[info.dataset_offset:]
    stream = b"\x07" + fragment_pdata(1, True, rq.encode(), 16384)
    stream += fragment_pdata(1, False, dataset, 16384) + ReleaseRq().encode()
    (corpus / hashlib.sha1(stream).hexdigest()).write_bytes(stream)
PY
    ;;
*)
    echo "unknown fuzz target: $target (scan, rewrite, pdu or scp_receiver)" >&2
    exit 2
    ;;
esac

cd "$fuzz_dir/.."  # cargo fuzz finds ./fuzz from the crate it fuzzes
cargo fuzz build "$target"
# -timeout: an input of a few hundred KB takes milliseconds; seconds mean a hang.
if cargo fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    2>&1 | tee "$log"; then
    status=0
else
    status=$?
fi

echo "--- fuzz summary (full log: $log)"
grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::)' "$log" || true
if [ "$status" -ne 0 ]; then
    echo "fuzzing FAILED (exit $status): reproducer in $fuzz_dir/artifacts/$target/" >&2
    grep -E -A3 'panicked at|ERROR: libFuzzer|SUMMARY:|Test unit written' "$log" >&2 || true
fi
exit "$status"
