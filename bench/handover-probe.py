#!/usr/bin/env python3
"""What a program using a mount sees while its daemon is replaced: writes 4 KiB and
fdatasyncs, over and over, for SECONDS, and prints one JSON line: the number of operations,
failures, the median and the longest operation (ms), and when the longest one started (s
after the first). Usage: handover-probe.py DIR SECONDS"""
import json
import os
import statistics
import sys
import time

d, seconds = sys.argv[1], float(sys.argv[2])
fd = os.open(os.path.join(d, "probe"), os.O_RDWR | os.O_CREAT, 0o644)
block = os.urandom(4096)
lat, failures, start = [], 0, time.monotonic()
worst, worst_at = 0.0, 0.0
i = 0
while time.monotonic() - start < seconds:
    t = time.monotonic()
    try:
        os.pwrite(fd, block, (i % 256) * 4096)
        os.fdatasync(fd)
    except OSError as e:
        failures += 1
        print(f"operation {i}: {e}", file=sys.stderr)
    dt = time.monotonic() - t
    lat.append(dt)
    if dt > worst:
        worst, worst_at = dt, t - start
    i += 1
os.close(fd)
print(json.dumps({"ops": len(lat), "failures": failures,
                  "p50_ms": round(statistics.median(lat) * 1000, 2),
                  "max_ms": round(worst * 1000, 1), "max_at_s": round(worst_at, 2)}))
