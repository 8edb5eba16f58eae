#!/usr/bin/env python3
"""scikit-learn's side of the training comparison of issue 13 (dev-only).

`ml-pipeline-tools train-compare --out DIR ...` writes DIR/ours.json (settings, feature order,
our per-fold accuracy and full-fit time) and DIR/oof.csv (each row's fold and our out-of-fold
decision and class). This script reads the same first N rows of the same CSV, and on the same
folds fits StandardScaler on each fold's training rows and sklearn.svm.SVC with the same kernel,
C, gamma = 1/width and tol on the scaled rows, as our `fit::fit` does. It then times SVC.fit
alone on all N rows (scaled beforehand), as many times as we timed ours.

It prints one markdown table row (--header prints the header), writes DIR/sklearn.json, and
exits 1 when the accuracies differ by more than --max-diff-points (0.5) or the out-of-fold
classes agree on fewer than --min-agreement (99.5 %) of the rows: issue 13's bars.

    python sklearn_compare.py --out DIR          compare
    python sklearn_compare.py --header           the table header
    python sklearn_compare.py --self-test        check the pure parts and a small end-to-end run
"""

import argparse
import contextlib
import csv
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HEADER = (
    "| rows | kernel | C | width | ours CV % | sklearn CV % | diff (points) | OOF agreement % "
    "| ours fit s | sklearn fit s | ours / sklearn | verdict |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def read_rows(csv_path, features, label_column, n):
    """The first n rows: features in the given order and labels (1 = real) as lists."""
    x, y = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if len(y) == n:
                break
            x.append([float(row[name]) for name in features])
            y.append(parse_label(row[label_column]))
    if len(y) != n:
        raise SystemExit(f"{csv_path} has {len(y)} rows, {n} were asked for")
    return x, y


def parse_label(text):
    """A class as `train` reads it: 1/0, true/false or real/fake."""
    t = text.strip()
    if t in ("1", "1.0", "true", "real"):
        return 1
    if t in ("0", "0.0", "false", "fake"):
        return 0
    raise ValueError(f"label {text!r} is not 1/0, true/false or real/fake")


def read_oof(path):
    """oof.csv as lists: fold, label, our predicted class, in row order."""
    folds, labels, predicted = [], [], []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if int(row["row"]) != i:
                raise SystemExit(f"{path}: line {i + 2} is row {row['row']}, expected {i}")
            folds.append(int(row["fold"]))
            labels.append(int(row["label"]))
            predicted.append(int(row["predicted"]))
    return folds, labels, predicted


def accuracy(truth, predicted):
    return sum(1 for t, p in zip(truth, predicted) if t == p) / len(truth)


def fold_accuracies(folds, truth, predicted, k):
    """Accuracy on each fold's rows."""
    out = []
    for fold in range(k):
        idx = [i for i, f in enumerate(folds) if f == fold]
        out.append(accuracy([truth[i] for i in idx], [predicted[i] for i in idx]))
    return out


def agreement(a, b):
    """Share of rows where two class lists agree."""
    return sum(1 for p, q in zip(a, b) if p == q) / len(a)


def verdict(diff_points, agree, max_diff_points, min_agreement):
    """Problems against the bars; empty when both are met."""
    problems = []
    if abs(diff_points) > max_diff_points:
        problems.append(f"accuracy differs by {diff_points:+.2f} points (bar {max_diff_points})")
    if agree * 100 < min_agreement:
        problems.append(f"labels agree on {agree * 100:.2f} % (bar {min_agreement} %)")
    return problems


def make_svc(ours):
    from sklearn.svm import SVC

    if ours["kernel"] == "linear":
        return SVC(kernel="linear", C=ours["c"], tol=ours["tolerance"])
    if ours["kernel"] == "gaussian":
        return SVC(kernel="rbf", C=ours["c"], gamma=1.0 / ours["width"], tol=ours["tolerance"])
    raise SystemExit(f"unknown kernel {ours['kernel']!r}")


def sklearn_side(ours, x, folds):
    """Out-of-fold classes on our folds and the full-fit times."""
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(ours["_labels"], dtype=np.int64)
    folds = np.asarray(folds)
    predicted = np.empty(len(y), dtype=np.int64)
    for fold in range(ours["folds"]):
        test = folds == fold
        scaler = StandardScaler().fit(x[~test])
        model = make_svc(ours).fit(scaler.transform(x[~test]), y[~test])
        predicted[test] = model.predict(scaler.transform(x[test]))
    scaled = StandardScaler().fit_transform(x)
    seconds, support = [], 0
    for _ in range(ours["repeats"]):
        model = make_svc(ours)
        started = time.perf_counter()
        model.fit(scaled, y)
        seconds.append(time.perf_counter() - started)
        support = int(model.n_support_.sum())
    return predicted.tolist(), seconds, support


def compare(out_dir, max_diff_points, min_agreement):
    out_dir = Path(out_dir)
    ours = json.loads((out_dir / "ours.json").read_text())
    folds, labels, our_predicted = read_oof(out_dir / "oof.csv")
    x, y = read_rows(ours["csv"], ours["features"], ours["label_column"], ours["rows"])
    if y != labels:
        raise SystemExit("oof.csv's labels are not the CSV's: different rows or order")
    k = ours["folds"]
    our_folds = fold_accuracies(folds, y, our_predicted, k)
    if any(abs(a - b) > 1e-9 for a, b in zip(our_folds, ours["fold_accuracy"])):
        raise SystemExit(f"oof.csv gives fold accuracies {our_folds}, ours.json {ours['fold_accuracy']}")
    ours["_labels"] = y
    sk_predicted, sk_seconds, sk_support = sklearn_side(ours, x, folds)
    sk_folds = fold_accuracies(folds, y, sk_predicted, k)
    our_cv, sk_cv = statistics.fmean(our_folds), statistics.fmean(sk_folds)
    diff = (our_cv - sk_cv) * 100
    agree = agreement(our_predicted, sk_predicted)
    our_fit = ours["fit_spread"]["median"]
    sk_fit = statistics.median(sk_seconds)
    problems = verdict(diff, agree, max_diff_points, min_agreement)
    result = {
        "rows": ours["rows"],
        "kernel": ours["kernel"],
        "c": ours["c"],
        "width": ours["width"],
        "folds": k,
        "ours_fold_accuracy": our_folds,
        "sklearn_fold_accuracy": sk_folds,
        "ours_cv_accuracy": our_cv,
        "sklearn_cv_accuracy": sk_cv,
        "diff_points": diff,
        "oof_agreement": agree,
        "ours_fit_seconds": ours["fit_seconds"],
        "sklearn_fit_seconds": sk_seconds,
        "ours_support_vectors": ours["support_vectors"],
        "sklearn_support_vectors": sk_support,
        "time_ratio": our_fit / sk_fit,
        "problems": problems,
    }
    import sklearn

    result["sklearn_version"] = sklearn.__version__
    (out_dir / "sklearn.json").write_text(json.dumps(result, indent=2) + "\n")
    for fold, (a, b) in enumerate(zip(our_folds, sk_folds)):
        print(f"  fold {fold + 1}: ours {a * 100:.2f} %, sklearn {b * 100:.2f} %", file=sys.stderr)
    print(
        f"  support vectors: ours {ours['support_vectors']}, sklearn {sk_support}; "
        f"fit repeats {ours['repeats']}",
        file=sys.stderr,
    )
    width = "-" if ours["width"] is None else f"{ours['width']:g}"
    print(
        f"| {ours['rows']} | {ours['kernel']} | {ours['c']:g} | {width} "
        f"| {our_cv * 100:.2f} | {sk_cv * 100:.2f} | {diff:+.2f} | {agree * 100:.2f} "
        f"| {our_fit:.3f} | {sk_fit:.3f} | {our_fit / sk_fit:.2f} "
        f"| {'ok' if not problems else 'FAIL: ' + '; '.join(problems)} |"
    )
    return not problems


def self_test():
    """The pure parts, then a run on 500 made-up rows where ours is sklearn itself."""
    assert parse_label("1") == 1 and parse_label("fake") == 0
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert fold_accuracies([0, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], 2) == [1.0, 0.5]
    assert agreement([1, 0, 1, 0], [1, 0, 0, 0]) == 0.75
    assert verdict(0.4, 0.996, 0.5, 99.5) == []
    assert len(verdict(-0.6, 0.996, 0.5, 99.5)) == 1
    assert len(verdict(0.0, 0.99, 0.5, 99.5)) == 1
    assert not math.isnan(statistics.fmean([0.5, 1.0]))

    import random

    rng = random.Random(7)
    features = ["variance", "skewness", "curtosis", "entropy"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for i in range(500):
            label = i % 2
            values = [rng.gauss(1.5 if label else -1.5, 1.0) for _ in features]
            rows.append((f"SN-{i}", label, values))
        with open(tmp / "notes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["note_id", "label", *reversed(features)])
            for note, label, values in rows:
                w.writerow([note, label, *reversed(values)])
        folds = [i % 5 for i in range(500)]
        ours = {
            "csv": str(tmp / "notes.csv"), "rows": 500, "features": features,
            "label_column": "label", "kernel": "gaussian", "c": 10.0, "width": 4.0,
            "tolerance": 1e-3, "folds": 5, "seed": 42, "repeats": 1,
        }
        x, y = read_rows(ours["csv"], features, "label", 500)
        assert x[3] == rows[3][2], "features are read by name in the given order"
        ours["_labels"] = y
        predicted, seconds, _ = sklearn_side(ours, x, folds)
        # "Ours" is sklearn's own answer: the comparison must find no difference.
        ours.pop("_labels")
        ours["fold_accuracy"] = fold_accuracies(folds, y, predicted, 5)
        ours["fit_seconds"] = seconds
        ours["fit_spread"] = {"median": seconds[0], "min": seconds[0], "max": seconds[0]}
        ours["support_vectors"] = 0
        (tmp / "ours.json").write_text(json.dumps(ours))
        with open(tmp / "oof.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "fold", "label", "decision", "predicted"])
            for i in range(500):
                w.writerow([i, folds[i], y[i], 0.0, predicted[i]])
        with contextlib.redirect_stdout(sys.stderr):
            assert compare(tmp, 0.5, 99.5), "identical predictions must pass"
        result = json.loads((tmp / "sklearn.json").read_text())
        assert result["oof_agreement"] == 1.0 and result["diff_points"] == 0.0
        # Flip 5 % of our classes: the agreement bar must fail.
        with open(tmp / "oof.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "fold", "label", "decision", "predicted"])
            for i in range(500):
                w.writerow([i, folds[i], y[i], 0.0, 1 - predicted[i] if i % 20 == 0 else predicted[i]])
        ours["fold_accuracy"] = fold_accuracies(
            folds, y, [1 - p if i % 20 == 0 else p for i, p in enumerate(predicted)], 5
        )
        (tmp / "ours.json").write_text(json.dumps(ours))
        with contextlib.redirect_stdout(sys.stderr):
            assert not compare(tmp, 0.5, 99.5), "5 % disagreement must fail"
    print("self-test passed", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the directory train-compare wrote")
    parser.add_argument("--header", action="store_true", help="print the table header and exit")
    parser.add_argument("--self-test", action="store_true", help="check this script and exit")
    parser.add_argument("--max-diff-points", type=float, default=0.5)
    parser.add_argument("--min-agreement", type=float, default=99.5, help="percent")
    args = parser.parse_args()
    if args.header:
        print(HEADER)
        return 0
    if args.self_test:
        self_test()
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    return 0 if compare(args.out, args.max_diff_points, args.min_agreement) else 1


if __name__ == "__main__":
    sys.exit(main())
