#!/usr/bin/env python3
"""Medians of interleaved runs and ratios vs atefs, as a markdown table.

usage: summarize.py RESULTS_DIR   (files <fs>.run<k>.out with lines "metric value unit")
"""
import collections, glob, os, statistics, sys

LOWER_IS_BETTER = {"ls_l_cold", "ls_l_warm", "untar", "untar_sync", "find_cold", "rm_rf"}
ORDER = ["disk", "bindfs_tuned", "gocryptfs", "atefs"]

def main(d):
    vals = collections.defaultdict(lambda: collections.defaultdict(list))
    units = {}
    for path in sorted(glob.glob(os.path.join(d, "*.run*.out"))):
        fs = os.path.basename(path).split(".run")[0]
        for line in open(path):
            parts = line.split()
            if len(parts) == 3 and parts[1] != "NA":
                vals[parts[0]][fs].append(float(parts[1]))
                units[parts[0]] = parts[2]
    fss = [f for f in ORDER if any(f in v for v in vals.values())]
    print("| metric | unit | " + " | ".join(fss) + " | atefs / disk | atefs / gocryptfs | atefs / bindfs_tuned |")
    print("|---" * (len(fss) + 5) + "|")
    for metric, per in vals.items():
        if metric == "find_entries":
            continue
        med = {f: statistics.median(per[f]) for f in fss if per.get(f)}
        def ratio(other):
            if "atefs" not in med or other not in med or med[other] == 0:
                return "–"
            r = med["atefs"] / med[other]
            # Shown so that > 1 means atefs is better.
            return f"{(1 / r if metric in LOWER_IS_BETTER else r):.2f}×"
        cells = [f"{med[f]:,.3g}" if f in med else "–" for f in fss]
        print(f"| {metric} | {units[metric]} | " + " | ".join(cells) + f" | {ratio('disk')} | {ratio('gocryptfs')} | {ratio('bindfs_tuned')} |")
    print()
    print("Runs per file system: " + ", ".join(f"{f} {len(vals['seq_write'].get(f, []))}" for f in fss)
          + ". Ratios: > 1× means atefs is better (higher rate or shorter time).")

if __name__ == "__main__":
    main(sys.argv[1])
