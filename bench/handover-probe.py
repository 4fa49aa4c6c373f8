#!/usr/bin/env python3
"""What a program using a mount sees while its daemon is replaced: writes 4 KiB and
fdatasyncs, over and over, for SECONDS, and prints one JSON line: the number of operations,
failures, the median and the longest operation (ms), when the longest one started (s after
the first), and the longest operation that overlapped the window (two wall-clock times)
found in WINDOW_FILE at the end: the take-over.
Usage: handover-probe.py DIR SECONDS WINDOW_FILE"""
import json
import os
import statistics
import sys
import time

d, seconds, window_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
fd = os.open(os.path.join(d, "probe"), os.O_RDWR | os.O_CREAT, 0o644)
block = os.urandom(4096)
lat, walls, failures, start = [], [], 0, time.monotonic()
worst, worst_at = 0.0, 0.0
i = 0
while time.monotonic() - start < seconds:
    t, wall = time.monotonic(), time.time()
    try:
        os.pwrite(fd, block, (i % 256) * 4096)
        os.fdatasync(fd)
    except OSError as e:
        failures += 1
        print(f"operation {i}: {e}", file=sys.stderr)
    dt = time.monotonic() - t
    lat.append(dt)
    walls.append(wall)
    if dt > worst:
        worst, worst_at = dt, t - start
    i += 1
os.close(fd)
t0, t1 = (float(x) for x in open(window_file).read().split())
during = [dt for w, dt in zip(walls, lat) if w < t1 and w + dt > t0]
print(json.dumps({"ops": len(lat), "failures": failures,
                  "window_max_ms": round(max(during, default=0) * 1000, 1),
                  "p50_ms": round(statistics.median(lat) * 1000, 2),
                  "max_ms": round(worst * 1000, 1), "max_at_s": round(worst_at, 2)}))
