"""The issue's speed targets, read from a `rnnlab bench --json` report, as the Markdown table of
docs/BENCHMARKS.md. Usage: python scripts/bench_targets.py bench.json"""

import json
import sys
from collections import defaultdict

MATCHING = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU", "vanilla": "torch.nn.RNN"}


def main(path: str) -> None:
    report = json.load(open(path))
    # the first thread count of `--threads` (the targets are one-thread figures); older reports have one
    threads = (report["settings"].get("threads") or [1])[0]
    rows = [r for r in report["rows"] if r.get("threads", threads) == threads]
    times = defaultdict(dict)  # (size, pass) -> candidate name -> median seconds
    names = {}  # (size, pass, cell, variant, impl) -> candidate name
    for r in rows:
        if r["status"] != "ok":
            continue
        s = r["size"]
        size = (s["B"], s["H"], s["I"], s["T"])
        times[size, r["pass"]][r["name"]] = r["median_s"]
        if r["cell"] is not None:  # rnnlab's candidates (peers have none)
            names[size, r["pass"], r["cell"], r["variant"], r["impl"]] = r["name"]
    out = ["| target | size | pass | measured | goal |", "| --- | --- | --- | ---: | ---: |"]

    def line(label, size, pass_name, value, goal, unit="x"):
        out.append(f"| {label} | ({','.join(map(str, size))}) | {pass_name} | {value:.2f}{unit} | {goal} |")

    groups = sorted(times)
    for size, pass_name in groups:  # auto for torch's own cells against the matching layer
        for cell, peer in MATCHING.items():
            name = names.get((size, pass_name, cell, "plain", "auto"))
            if name and peer in times[size, pass_name]:
                line(f"{name} vs {peer}", size, pass_name, times[size, pass_name][name] / times[size, pass_name][peer],
                     "<= 1.05x")
    for size, bound in (((64, 256, 256, 100), "<= 1.25x"), ((32, 128, 128, 100), "<= 1.4x")):
        group = times.get((size, "forward+backward"), {})
        name = names.get((size, "forward+backward", "lstm", "feedback", "fused"))
        if name in group:
            line("fused LSTM + feedback vs torch.nn.LSTM", size, "forward+backward",
                 group[name] / group["torch.nn.LSTM"], bound)
    for size, pass_name in groups:  # every other fused ladder cell at most the fused LSTM
        if size[0] == 1 or pass_name != "forward+backward":
            continue
        group = times[size, pass_name]
        lstm = group.get(names.get((size, pass_name, "lstm", "plain", "fused")))
        for (s, p, cell, variant, impl), name in sorted(names.items()):
            if (s, p) == (size, pass_name) and impl == "fused" and variant in ("plain", "feedback") and cell != "lstm" \
                    and (variant == "plain" or cell == "feedback") and lstm:
                line(f"fused {cell} vs fused LSTM (same sizes)", size, pass_name, group[name] / lstm, "<= 1x")
    for size, pass_name in groups:  # streaming-sized work
        if size[0] != 1:
            continue
        group = times[size, pass_name]
        for (s, p, cell, variant, impl), name in sorted(names.items()):
            if (s, p) == (size, pass_name) and impl == "fused" and variant == "plain":
                line(f"fused {cell} vs torch.nn.LSTM", size, pass_name, group[name] / group["torch.nn.LSTM"], "<= 2x")
    for size, pass_name in groups:  # scan over reference
        if pass_name != "forward+backward":
            continue
        group = times[size, pass_name]
        for (s, p, cell, variant, impl), name in sorted(names.items()):
            if (s, p) == (size, pass_name) and impl == "scan" and variant == "linear":
                reference = group.get(names.get((size, pass_name, cell, variant, "reference")))
                if reference:
                    line(f"scan {cell} lin speed-up over reference", size, pass_name, reference / group[name],
                         ">= 20x (at T=1024)")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
