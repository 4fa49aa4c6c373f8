#!/usr/bin/env python3
"""Medians of interleaved runs and ratios vs atefs, as a markdown table.

usage: summarize.py RESULTS_DIR [SUBJECT [OTHER,OTHER...]]
  (files <fs>.run<k>.out with lines "metric value unit"; ratios are SUBJECT / OTHER, by
  default atefs against disk, gocryptfs and bindfs_tuned)
"""
import collections, glob, os, statistics, sys

LOWER_IS_BETTER = {"ls_l_cold", "ls_l_warm", "untar", "untar_sync", "find_cold", "rm_rf"}
ORDER = ["disk", "bindfs_tuned", "gocryptfs", "gluster", "atefs", "atefs_cluster", "atefs_cluster_rwo"]

def main(d, subject="atefs", others=("disk", "gocryptfs", "bindfs_tuned")):
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
    print("| metric | unit | " + " | ".join(fss) + " | " + " | ".join(f"{subject} / {o}" for o in others) + " |")
    print("|---" * (len(fss) + 2 + len(others)) + "|")
    for metric, per in vals.items():
        if metric == "find_entries":
            continue
        med = {f: statistics.median(per[f]) for f in fss if per.get(f)}
        def ratio(other):
            if subject not in med or other not in med or med[other] == 0:
                return "–"
            r = med[subject] / med[other]
            # Shown so that > 1 means atefs is better.
            return f"{(1 / r if metric in LOWER_IS_BETTER else r):.2f}×"
        cells = [f"{med[f]:,.3g}" if f in med else "–" for f in fss]
        print(f"| {metric} | {units[metric]} | " + " | ".join(cells) + " | " + " | ".join(ratio(o) for o in others) + " |")
    print()
    print("Runs per file system: " + ", ".join(f"{f} {len(vals['seq_write'].get(f, []))}" for f in fss)
          + f". Ratios: > 1× means {subject} is better (higher rate or shorter time).")

if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) >= 3:
        main(args[0], args[1], tuple(args[2].split(",")))
    elif len(args) == 2:
        main(args[0], args[1])
    else:
        main(args[0])
