"""The table compare.sh prints: medians and ranges over the repetitions of each worker's bench
reports (`ml-pipeline-tools bench --report`), beside the relay ceiling of the same runs.

    python summary.py DIR      # reads DIR/python-*.json and DIR/rust-*.json
"""

import glob
import json
import os
import sys


def median_range(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[len(values) // 2], values[0], values[-1]


def cell(values, digits=0):
    m = median_range(values)
    if m is None:
        return "n/a"
    return f"{m[0]:.{digits}f} ({m[1]:.{digits}f}-{m[2]:.{digits}f})"


def first(series, key, index=None):
    values = series.get(key) or []
    if not values:
        return None
    return values[0] if index is None else values[0][index]


def bundles_per_batch(report):
    """Bundles answered per batch in the run, from the worker's batch count (None without it).
    A Rust worker started by bench also answered one cold-start bundle, in a batch counted
    here."""
    if not report.get("batches"):
        return None
    batches, _records = report["batches"]
    return report["worker"]["answered"] / batches if batches else None


def main(directory: str) -> int:
    rows = []
    for worker in ("python", "rust"):
        reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(directory, f"{worker}-*.json")))]
        if not reports:
            continue
        w = [r["worker"] for r in reports]
        relay = [first(r["relay"], "records_per_s") for r in reports]
        rate = [first(s, "records_per_s") for s in w]
        share = [a / b * 100 if a and b else None for a, b in zip(rate, relay)]
        rows.append((
            worker, len(reports),
            cell(rate), cell(relay), cell(share),
            cell([first(s, "latency_ms", 0) for s in w], 1),
            cell([first(s, "latency_ms", 2) for s in w], 1),
            cell([first(r["relay"], "latency_ms", 2) for r in reports], 1),
            cell([first(s, "cpu_s_per_1000", None) for s in w], 4),
            cell([r.get("peak_rss_mib") for r in reports], 1),
            cell([first(r["calls"]["sqs_per_1000_bundles"], "total", None) for r in reports]),
            cell([r["calls"]["sqs_usd_per_million_bundles"][0]
                  if r["calls"]["sqs_usd_per_million_bundles"] else None for r in reports], 3),
            cell([bundles_per_batch(r) for r in reports], 2),
            f"{sum(s['answered'] for s in w)}/{sum(s['sent'] for s in w)}"
            f" dup {sum(s['duplicated'] for s in w)} lost {sum(s['lost'] for s in w)}",
        ))
    if not rows:
        print(f"no reports in {directory}", file=sys.stderr)
        return 1
    r0 = json.load(open(sorted(glob.glob(os.path.join(directory, "*.json")))[0]))
    pace = f"paced at {r0['rate']:.0f} records/s" if r0.get("rate") else "as fast as possible"
    print(f"{r0['bundles']} bundles x {r0['records']} records per run, {pace}; "
          "median (min-max) over the repetitions")
    head = ("worker", "runs", "records/s", "relay ceiling rec/s", "% of relay", "p50 ms",
            "p99 ms", "relay p99 ms", "CPU s/1000 rec", "peak RSS MiB", "SQS req/1000 bundles",
            "SQS $/M bundles", "bundles/batch", "bundles answered")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for line in (head, *rows):
        print("  ".join(str(x).ljust(n) for x, n in zip(line, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
