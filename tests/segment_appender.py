"""A child process for the kill -9 tests of the segment store: opens the store
at the durable end it is given, then appends rounds of records until killed.

Each line it prints is whole JSON: ``{"pending": [location, digest]}`` for a
record appended (not yet durable), ``{"durable": [segment, end], "records":
[[location, digest], ...]}`` once a round's commit has returned. Only the
second kind may be trusted, as a ledger would record it.

Usage: python segment_appender.py ROOT SEGMENT_SIZE SEED [SEGMENT END]
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

from dicomrelay._native import SegmentStore


def main() -> None:
    root, segment_size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    durable = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else None
    rng = random.Random(seed)
    store = SegmentStore(root, durable_end=durable, segment_size=segment_size)
    out = sys.stdout
    if durable is None:
        print(json.dumps({"durable": store.durable_end, "records": []}), file=out, flush=True)
    while True:
        round_ = []
        for _ in range(rng.randint(1, 16)):
            size = rng.choice((rng.randint(0, 20_000), rng.randint(20_000, 600_000)))
            data = rng.randbytes(size)
            digest = hashlib.sha256(data).hexdigest()
            location = store.append(data, digest)
            print(json.dumps({"pending": [location, digest]}), file=out, flush=True)
            round_.append([location, digest])
        end = store.commit()
        print(json.dumps({"durable": end, "records": round_}), file=out, flush=True)


if __name__ == "__main__":
    main()
