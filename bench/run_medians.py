"""Medians of a benchmark's runs, for the scripts that print one line per run and subject:
"run K SUBJECT name=value name=value ...". `medians(path)` prints "median SUBJECT: ..." for each
subject and returns {subject: {name: median}}."""
import collections
import statistics


def medians(path):
    rows = collections.defaultdict(list)
    for line in open(path):
        _, _, what, *pairs = line.split()
        rows[what].append({k: float(v) for k, v in (p.split("=") for p in pairs)})
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in rows.items()}
    for w, m in med.items():
        print(f"median {w}: " + " ".join(f"{k}={v:g}" for k, v in m.items()))
    return med
