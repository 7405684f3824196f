"""The bench's logic on a tiny grid: rows, ratios, reasons, the table, JSON, flags. Nothing here asserts a time."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlab import bench, kernels
from rnnlab.bench import BenchConfig, Size
from rnnlab.cli import flag_name, main

from conftest import EXTENSION

ROOT = Path(__file__).resolve().parent.parent

TINY = (Size(2, 4, 3, 5),)


def tiny(**overrides) -> BenchConfig:
    options = dict(sizes=TINY, cells=("lstm", "feedback"), impls=("reference", "auto"), reps=2)
    options.update(overrides)
    return BenchConfig(**options)


def rows_of(result, **match):
    return [r for r in result.rows if all(getattr(r, k) == v for k, v in match.items())]


def fake_clock(monkeypatch, durations):
    """Every call of candidate `name` 'takes' durations[name] in turn (call 0 is the warm-up: the first
    entry), 2 ms where none is given; the matmul peak is 1 GFLOP/s per thread."""
    calls: dict[str, int] = {}

    def fake_call(candidate, backward, device="cpu"):
        n = calls[candidate.name] = calls.get(candidate.name, -1) + 1
        series = durations.get(candidate.name, [0.002])
        return series[0] if n == 0 else series[(n - 1) % len(series)]

    monkeypatch.setattr(bench, "_call", fake_call)
    monkeypatch.setattr(bench, "matmul_peak", lambda **kwargs: 1e9 * torch.get_num_threads())


def test_tiny_grid_times_peers_and_rnnlab_in_both_passes():
    result = bench.run_bench(tiny())
    for pass_name in bench.PASSES:
        names = {r.name for r in rows_of(result, pass_name=pass_name)}
        assert set(bench.PEERS) <= names
        assert "lstm [reference]" in names and "lstm fb [reference]" in names
        assert "feedback fb [reference]" in names
        for row in rows_of(result, pass_name=pass_name, status="ok"):
            assert len(row.times_s) == 2
            assert row.min_s <= row.median_s <= row.max_s
            assert row.flops > 0 and row.peak_fraction > 0
    assert result.peaks[0].before > 0 and result.peaks[0].after > 0
    assert result.machine.threads == (1,) and result.machine.torch == torch.__version__


def test_auto_rows_say_what_ran_in_their_pass(monkeypatch):
    """auto's LSTM runs native under no_grad and fused when gradients are recorded (with the C++ loops):
    the row of each pass names its own, and the candidate both."""
    ran = []
    for name in ("native", "fused"):
        spy = lambda *args, _name=name, _run=kernels.IMPLEMENTATIONS[name]: ran.append(_name) or _run(*args)  # noqa: E731
        monkeypatch.setitem(kernels.IMPLEMENTATIONS, name, spy)
    result = bench.run_bench(tiny(cells=("lstm",), impls=("auto",), variants=("plain",)))
    expected = {"forward": "native", "forward+backward": "fused" if EXTENSION is not None else "native"}
    for pass_name, name in expected.items():
        (row,) = rows_of(result, pass_name=pass_name, impl="auto")
        assert row.resolved == name and row.status == "ok"
        assert row.name == "lstm [auto: native/fused]" if EXTENSION is not None else row.name == "lstm [auto: native]"
    assert set(ran) == set(expected.values())


def test_ratios_medians_and_peak_shares_against_a_fake_clock(monkeypatch):
    """Every call of a candidate 'takes' a known time (its repetitions in a known order), so each
    reported number has a value to be compared with: a bench that mixed up candidates, took the mean
    or divided the wrong way would fail here."""
    fake_clock(monkeypatch, {"torch.nn.LSTM": [0.010, 0.002, 0.003], "lstm [reference]": [0.030, 0.006, 0.009],
                             "torch.nn.GRU": [0.001, 0.001, 0.001]})
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",), variants=("plain",), passes=("forward",),
                                  reps=3))
    lstm, ref, gru = (rows_of(result, name=n)[0] for n in ("torch.nn.LSTM", "lstm [reference]", "torch.nn.GRU"))
    assert (lstm.median_s, lstm.min_s, lstm.max_s) == (0.003, 0.002, 0.010)  # the median, not the mean
    assert ref.median_s == 0.009 and ref.ratio == pytest.approx(3.0) and ref.ratio_match == pytest.approx(3.0)
    assert gru.ratio == pytest.approx(1 / 3)
    assert ref.peak_fraction == pytest.approx(ref.flops / 0.009 / 1e9)
    # the table prints those numbers, in the row of each candidate
    table = result.table()
    line = dict(zip(table.headers, next(row for row in table.rows if row[2] == "lstm [reference]")))
    assert (line["median ms"], line["min-max ms"], line["x LSTM"], line["x match"]) == ("9.00", "6.00-30.00", "3.00",
                                                                                         "3.00")
    assert line["peak"] == f"{ref.flops / 0.009 / 1e9:.1%}" and line["size (BxHxIxT)"] == "2x4x3x5"


def test_thread_counts_side_by_side_each_against_its_own_lstm(monkeypatch):
    """--threads 1,2: every (size, pass) timed at both counts, with the thread count set for each call,
    each ratio against torch.nn.LSTM at the same count, and both columns in the table."""
    seen: list[tuple[str, int]] = []
    time_at = {("torch.nn.LSTM", 1): 0.010, ("lstm [reference]", 1): 0.020,
               ("torch.nn.LSTM", 2): 0.004, ("lstm [reference]", 2): 0.012}

    def fake_call(candidate, backward, device="cpu"):
        seen.append((candidate.name, torch.get_num_threads()))
        return time_at.get((candidate.name, torch.get_num_threads()), 0.001)

    monkeypatch.setattr(bench, "_call", fake_call)
    monkeypatch.setattr(bench, "matmul_peak", lambda **kwargs: 1e9 * torch.get_num_threads())
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",), variants=("plain",), passes=("forward",),
                                  threads=(1, 2), reps=3))
    assert {n for _, n in seen} == {1, 2}
    ref = {r.threads: r for r in rows_of(result, name="lstm [reference]")}
    assert ref[1].ratio == pytest.approx(2.0) and ref[2].ratio == pytest.approx(3.0)
    assert ref[2].peak_fraction == pytest.approx(ref[2].flops / 0.012 / 2e9)  # the 2-thread peak
    assert [p.threads for p in result.peaks] == [1, 2] and result.to_dict()["settings"]["threads"] == [1, 2]
    table = result.table()
    assert "x LSTM 1t" in table.headers and "x LSTM 2t" in table.headers
    line = dict(zip(table.headers, next(row for row in table.rows if row[2] == "lstm [reference]")))
    assert (line["median ms 1t"], line["x LSTM 1t"], line["median ms 2t"], line["x LSTM 2t"]) == \
        ("20.00", "2.00", "12.00", "3.00")
    assert len(table.rows) == len(bench.PEERS) + 1  # one row per candidate, both counts side by side


def test_ratio_of_torch_lstm_to_itself_is_one():
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",)))
    for row in rows_of(result, name="torch.nn.LSTM"):
        assert row.ratio == 1.0
    ref = rows_of(result, name="lstm [reference]")[0]
    assert ref.ratio == pytest.approx(ref.median_s / rows_of(result, name="torch.nn.LSTM")[0].median_s)
    # plain lstm has a matching torch.nn layer, the feedback variant has none
    assert ref.ratio_match == ref.ratio
    assert rows_of(result, name="lstm fb [reference]")[0].ratio_match is None


def test_forward_plus_backward_counts_three_forwards_of_flops():
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",)))
    fwd, both = (rows_of(result, name="torch.nn.LSTM", pass_name=p)[0] for p in bench.PASSES)
    assert fwd.flops == 2 * 4 * 4 * (3 + 4) * 2 * 5
    assert both.flops == 3 * fwd.flops


def test_unavailable_implementation_is_reported_with_its_reason(monkeypatch):
    real = kernels.available
    monkeypatch.setattr(kernels, "available",
                        lambda cell, impl, **c: ("no fused path for this test" if impl == "fused"
                                                 else real(cell, impl, **c)))
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference", "fused")))
    row = rows_of(result, name="lstm [fused]")[0]
    assert row.status == "n/a" and row.reason == "no fused path for this test"
    assert row.median_s is None and "median_s" not in row.to_dict()
    assert "lstm [fused]" not in {r[2] for r in result.table().rows}  # not in the table: in the lines below it
    assert "2x4x3x5 forward: n/a: no fused path for this test: all 3 [fused] candidates" in result.untimed()


def test_runner_errors_become_reasons_not_crashes(monkeypatch):
    real_run = kernels.run

    def run(cell, xs, state, y_prev, lengths, masks, implementation="auto"):
        if implementation == "reference" and cell.feedback_size:
            raise ValueError("cannot serve feedback here")
        if implementation == "reference" and not cell.reads_state:
            raise RuntimeError("a broken kernel")
        return real_run(cell, xs, state, y_prev, lengths, masks, implementation)

    monkeypatch.setattr(kernels, "run", run)
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",), variants=("plain", "feedback", "linear")))
    assert rows_of(result, name="lstm fb [reference]")[0].reason == "cannot serve feedback here"
    broken = rows_of(result, name="lstm lin [reference]")[0]
    assert broken.status == "failed" and "RuntimeError: a broken kernel" in broken.reason
    assert rows_of(result, name="lstm [reference]")[0].status == "ok"


def test_slow_candidates_are_skipped_saying_so():
    result = bench.run_bench(tiny(cells=("lstm",), impls=("reference",), passes=("forward",), max_call_s=1e-9))
    row = rows_of(result, name="lstm [reference]")[0]
    assert row.status == "skipped" and f"{flag_name('max_call_s')} 1e-09" in row.reason  # the flag, spelled out


def test_variants_follow_the_cells():
    config = tiny(cells=("vanilla", "gru", "feedback"), impls=("reference",), variants=bench.VARIANTS)
    names = {c.name for c in bench.candidates(config, TINY[0], torch.zeros(2, 5, 3), torch.zeros(2, 5, 3))}
    assert {"vanilla [reference]", "vanilla fb [reference]", "gru lin [reference]", "feedback fb [reference]"} <= names
    assert "vanilla lin [reference]" not in names and "feedback [reference]" not in names


def test_threads_are_restored():
    before = torch.get_num_threads()
    bench.run_bench(tiny(cells=("lstm",), impls=("reference",), passes=("forward",), threads=(1, 2), reps=1))
    assert torch.get_num_threads() == before


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--impls", "reference,scan",
                 "--reps", "1", "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("rnnlab bench  cpu: ") and "matmul peak (fp32, 1 thread(s))" in out
    assert "| size (BxHxIxT) | pass | candidate | median ms |" in out  # the one table printer's Markdown
    assert "| 2x4x3x5 | forward | lstm [reference] |" in out
    assert "2x4x3x5 forward: n/a: " in out and "lstm [scan]" in out  # scan serves no LSTM that reads its state
    assert out.rstrip().endswith(f"wrote {path}")
    data = json.loads(path.read_text())
    assert {"machine", "peak_flops", "settings", "rows"} <= set(data)
    assert data["settings"]["sizes"] == ["2x4x3x5"]
    assert any(r["name"] == "lstm [scan]" for r in data["rows"])


def test_json_naming_a_folder_fails_before_measuring(tmp_path, capsys, monkeypatch):
    """--json DIR failed only after the whole measurement, which was lost."""
    def measured(*args, **kwargs):
        raise AssertionError("measured before checking --json")

    monkeypatch.setattr(bench, "run_bench", measured)
    assert main(["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--reps", "1", "--json", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"rnnlab: error: cannot write {tmp_path}: it is a folder; name a file in it"


def test_json_naming_a_file_that_is_no_report_is_refused_and_left_untouched(tmp_path, capsys):
    """--json RUN/config.json replaced a run's config with a bench report: the run was lost."""
    config = tmp_path / "config.json"
    config.write_text('{"task": "language", "train": {}}')
    args = ["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--impls", "reference", "--variants", "plain",
            "--passes", "forward", "--reps", "1", "--json"]
    assert main([*args, str(config)]) == 2
    assert "it exists and is not a JSON report of rnnlab bench" in capsys.readouterr().err
    assert config.read_text() == '{"task": "language", "train": {}}'
    report = tmp_path / "bench.json"  # a report of an earlier run is replaced
    assert main([*args, str(report)]) == 0 and main([*args, str(report)]) == 0


def test_the_json_keeps_the_layout_of_the_recorded_reports(monkeypatch, tmp_path):
    """The keys of docs/data's reports at every level, so scripts/bench_targets.py reads old and new alike."""
    old = json.loads((ROOT / "docs" / "data" / "bench_threads_after_openmp.json").read_text())
    fake_clock(monkeypatch, {})
    result = bench.run_bench(tiny(cells=("lstm", "gru"), impls=("fused",), variants=("plain",),
                                  passes=("forward", "forward+backward"), threads=(1, 2), reps=2, max_call_s=60))
    new = result.to_dict()
    assert list(new) == list(old) and list(new["settings"]) == list(old["settings"])
    assert list(new["peaks"][0]) == list(old["peaks"][0])
    # the machine's keys then the vector width, which a CPU's name does not tell (an EPYC: AVX2 or AVX-512)
    assert list(new["machine"]) == list(old["machine"]) + ["vectors"]
    assert new["machine"]["vectors"] == torch.backends.cpu.get_cpu_capability()
    assert f"({torch.backends.cpu.get_cpu_capability()})" in result.describe()[0]
    layouts = lambda report: {r["status"]: list(r) for r in report["rows"]}
    assert layouts(new)["ok"] == layouts(old)["ok"]
    assert list(new["rows"][0]["size"]) == ["B", "H", "I", "T"]
    row = rows_of(result, name="torch.nn.LSTM", threads=2, pass_name="forward")[0]
    assert new["rows"][result.rows.index(row)] == {**row.to_dict(), "median_s": 0.002, "ratio": 1.0}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(new))
    targets = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_targets.py"), str(path)],
                             capture_output=True, text=True, timeout=120)
    assert targets.returncode == 0, targets.stderr
    assert "| fused gru vs fused LSTM (same sizes) | (2,4,3,5) | forward+backward | 1.00x | <= 1x |" in targets.stdout


def test_cli_prints_the_paired_thread_table_with_two_counts(capsys):
    assert main(["bench", "--sizes", "2x4x3x5", "--cells", "lstm", "--impls", "reference", "--variants", "plain",
                 "--passes", "forward", "--threads", "1,2", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    assert "paired by repetition" in out and "| x LSTM 2t / 1t | min-max 2t | rounds worse at 2t |" in out
    assert "| 2x4x3x5 | forward | lstm [reference] |" in out.split("paired by repetition")[1]


@pytest.mark.parametrize("argv, flag", [
    (["--sizes", "32x128"], "--sizes"),
    (["--sizes", "32x0x128x100"], "--sizes"),
    (["--cells", "lstm,bogus"], "--cells"),
    (["--impls", "turbo"], "--impls"),
    (["--variants", "sideways"], "--variants"),
    (["--threads", "0"], "--threads"),
    (["--reps", "0"], "--reps"),
    (["--max-call-s", "0"], "--max-call-s"),
    (["--device", "tpu"], "--device"),
    (["--threads", "two"], "--threads"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device")]))
def test_bad_flags_give_one_line_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own checks exit; the config's return 2
        raise SystemExit(main(["bench", *argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnlab bench: error:") and flag in err[0]


def test_library_errors_name_the_field_not_the_flag():
    with pytest.raises(ValueError,
                       match=r"BenchConfig: threads must be a non-empty tuple of an int in \[1, 1024\]; got \(0,\)"):
        bench.BenchConfig(threads=(0,))
    with pytest.raises(ValueError, match=r"BenchConfig: threads must be distinct thread counts; got \(2, 2\)"):
        bench.BenchConfig(threads=(2, 2))
    with pytest.raises(TypeError, match=r"BenchConfig: reps must be an int >= 1; got '3'"):
        bench.BenchConfig(reps="3")
