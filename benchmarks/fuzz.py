"""Long fuzz run: random architectures against meta-device forward passes.

    python benchmarks/fuzz.py --count 10000 [--start 0] [--workers 1] [--out fuzz-results.jsonl]

Architecture ``seed`` is ``shapecalc._selftest.architectures.random_architecture(seed)``,
so every finding reproduces from its seed alone.  Each net is analysed at
input ``H`` (every spatial axis) and swept over 1..40, the edges of its
domain and a few large sizes: torch must run exactly where the engine's
domain says so, with every node's shape as predicted.  A validity
disagreement that only the meta kernels show (the cpu kernel agrees with the
engine) is counted apart, and so are sizes where torch's own kernels disagree
(a transposed conv with one empty output axis).  One JSON line per finding goes to ``--out``; the
summary goes to stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import sys
import time
import traceback


def check_seed(seed: int) -> dict:
    from shapecalc._selftest.architectures import cross_check, random_architecture

    architecture = random_architecture(seed)
    try:
        result = cross_check(architecture)
    except Exception as error:  # the harness itself broke: report, keep going
        return {"seed": seed, "status": "crash", "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=4), "architecture": architecture.describe()}
    if result.engine_error:
        status = "engine_error"
    elif result.disagreements:
        status = "disagree"
    else:
        status = "agree"
    return {
        "seed": seed, "status": status, "nd": architecture.nd, "steps": len(architecture.steps),
        "sizes": len(result.sizes), "valid": len(result.valid), "never_runs": result.never_runs,
        "undecided": result.undecided, "nodes_compared": result.nodes_compared,
        "meta_only": result.meta_only[:3], "torch_inconsistent": result.torch_inconsistent[:3],
        "engine_error": result.engine_error,
        "disagreements": result.disagreements[:3],
        "architecture": architecture.describe()
        if status != "agree" or result.meta_only or result.torch_inconsistent else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="architectures to check (default 1000)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--out", default="fuzz-results.jsonl", help="findings, one JSON object per line")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    totals: collections.Counter = collections.Counter()
    seeds = range(args.start, args.start + args.count)
    with open(args.out, "w") as out:
        if args.workers > 1:
            pool = multiprocessing.get_context("spawn").Pool(args.workers)
            results = pool.imap_unordered(check_seed, seeds, chunksize=8)
        else:
            results = map(check_seed, seeds)
        for done, record in enumerate(results, 1):
            totals[record["status"]] += 1
            for flag in ("never_runs", "undecided"):
                totals[flag] += bool(record.get(flag))
            totals["with_valid_sizes"] += bool(record.get("valid"))
            totals["meta_only"] += bool(record.get("meta_only"))
            totals["torch_inconsistent"] += bool(record.get("torch_inconsistent"))
            totals["sizes"] += record.get("sizes", 0)
            totals["nodes_compared"] += record.get("nodes_compared", 0)
            if record["status"] != "agree" or record.get("meta_only") or record.get("torch_inconsistent"):
                out.write(json.dumps(record) + "\n")
                out.flush()
            if done % 100 == 0 or done == args.count:
                elapsed = time.perf_counter() - started
                print(f"{done}/{args.count} in {elapsed:.0f} s: " + ", ".join(
                    f"{k} {totals[k]}" for k in ("agree", "disagree", "engine_error", "crash")), flush=True)
        if args.workers > 1:
            pool.close()
    elapsed = time.perf_counter() - started
    summary = {"count": args.count, "first_seed": args.start, "seconds": round(elapsed, 1), **totals}
    print(json.dumps(summary))
    return 0 if totals["disagree"] == totals["engine_error"] == totals["crash"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
