"""The generation bench's result (rnnlab/bench_generation.py): its table, its lines and its JSON layout,
from known numbers. Timing a real run through the CLI is in tests/test_generation.py."""

from rnnlab.bench import Machine
from rnnlab.bench_generation import LARGE_COPY_BYTES, GenerationBench, GenerationRow


def known() -> GenerationBench:
    """4 MB of weights; copies at 40 GB/s (cached) and 10 GB/s: floors of 100 and 400 us per token."""
    rows = (GenerationRow("rnnlab compiled", 250.0, 200.0, 240.0, 260.0, True),
            GenerationRow("rnnlab python", 1000.0, 900.0, 950.0, 1100.0, True),
            GenerationRow("torch.nn.LSTM loop", 500.0, 450.0, 480.0, 520.0, False))
    return GenerationBench(Machine("a CPU", 2, "2.13.0", "3.11", (1,), "cpu"), 4_000_000, 500, 0.8, None, 5, 0,
                           None, (1.0, 2.0, 3.0), (1.5, 2.5, 3.5), 40e9, 10e9, rows)


def test_the_table_has_each_loop_against_the_floor():
    table = known().table()
    assert table.headers[:5] == ("candidate", "us/token", "min-max", "tokens/s", "x floor")
    compiled, python, peer = (dict(zip(table.headers, row)) for row in table.rows)
    assert (compiled["us/token"], compiled["min-max"], compiled["tokens/s"], compiled["x floor"]) == \
        ("250.0", "240-260", "4,000", "2.50")
    assert (python["CPU us/token"], python["CPU x floor"], python["same tokens"]) == ("900.0", "9.00", "yes")
    assert peer["same tokens"] == "no"


def test_the_lines_above_the_table_and_the_json_layout():
    bench = known()
    lines = bench.describe()
    assert lines[0] == "rnnlab bench --generation  cpu: a CPU  cores: 2  torch 2.13.0  threads: 1"
    assert "top-k all" in lines[1]
    assert lines[2] == "load average (1, 5, 15 min): 1.00, 2.00, 3.00 before, 1.50, 2.50, 3.50 after"
    assert lines[-1] == "floor, one pass over the weights per token: 100.0 us (cached), 400.0 us (from memory)"
    data = bench.to_dict()
    assert list(data) == ["machine", "weights_bytes", "length", "temperature", "top_k", "reps", "seed",
                          "compiled_refusal", "load_average", "bandwidth", "floor_us_per_char", "rows"]
    assert data["machine"] == {"cpu": "a CPU", "cores": 2, "torch": "2.13.0", "python": "3.11", "threads": [1],
                               "device": "cpu"}
    assert data["bandwidth"] == {"cached_bytes_per_s": 40e9, "large_bytes_per_s": 10e9, "large_bytes": LARGE_COPY_BYTES}
    assert data["floor_us_per_char"] == {"cached": 100.0, "large": 400.0}
    assert data["rows"][0] == {"name": "rnnlab compiled", "us_per_char": 250.0, "cpu_us_per_char": 200.0,
                               "chars_per_s": 4000.0, "min_us_per_char": 240.0, "max_us_per_char": 260.0,
                               "same_tokens_as_python": True}
