"""Free-running generation: the compiled loop (kernels/generate.cpp) chooses the same tokens as the
Python step loop for the same seed, draws the same random numbers, and the models it does not serve
fall back to the Python loop (or are refused, when asked for by name, with the reason)."""

import json

import pytest
import torch

from rnnlab import generation
from rnnlab.cli import main
from rnnlab.tasks.language import LanguageConfig, build_model, sample

from conftest import EXTENSIONS
from play_text import write_play

BUILT = EXTENSIONS[generation.MODULE] is not None
needs_module = pytest.mark.skipif(not BUILT, reason="the C++ module rnnlab_generate is not built here "
                                  "(`make test` builds it first)")


def language_model(vocab=20, dtype=torch.float32, seed=0, scale=3.0, **config):
    """A language model as `rnnlab train` builds it, with weights that make peaked distributions."""
    torch.manual_seed(seed)
    model = build_model(LanguageConfig(**config), vocab).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # far from uniform: greedy and top-k have clear winners, the samples vary
    return model


# The layer-norm LSTM at 3x its initial weights (gains 3 included) is chaotic: the Python loop itself,
# its state moved by one rounding (1e-15 in float64, 1e-7 in float32), chooses other greedy tokens
# after 153 and 41 steps, where the compiled loop does (the logits' top two then 0.007 apart); at 1.5x a
# rounding still grows over 100-200 steps in float32. At its initial weights a rounding dies out: so
# it is tested there, where the samples still vary (9 of the 10 tokens in 200).
LAYERNORM = dict(cell="layernorm-lstm", scale=1.0)


def both(model, prompt, length, temperature, top_k, seed):
    """(python ids, compiled ids, python generator state, compiled generator state)."""
    results = []
    for implementation in ("python", "compiled"):
        generator = torch.Generator().manual_seed(seed)
        ids = sample(model, prompt, length, temperature, top_k, generator, implementation=implementation)
        results += [ids, generator.get_state()]
    return results[0], results[2], results[1], results[3]


@needs_module
@pytest.mark.parametrize("temperature,top_k", [(0.8, None), (1.0, 5), (1.5, 1), (0.0, None), (0.5, 100)])
def test_the_default_model_samples_the_same_200_characters_both_ways(temperature, top_k):
    # the default architecture: embedding 64, one LSTM layer of 512, a linear readout (V = 65 as the
    # bundled Shakespeare's vocabulary)
    model = language_model(vocab=65)
    assert generation.compiled_refusal(model) is None
    prompt = torch.tensor([3, 7, 11])
    for seed in (0, 1):
        py, cc, py_state, cc_state = both(model, prompt, 200, temperature, top_k, seed)
        assert py.tolist() == cc.tolist()
        assert torch.equal(py_state, cc_state)  # the generator advanced by the same draws
        assert len(set(py.tolist())) > (1 if temperature and top_k != 1 else 0)  # something was sampled
        assert 0 not in py.tolist()  # never <unk>


@needs_module
@pytest.mark.parametrize("config", [dict(hidden=24, embedding=8), dict(hidden=16, embedding=6, layers=3),
                                    dict(hidden=20, embedding=5, feedback=True),
                                    dict(hidden=12, embedding=4, feedback=True, layers=2),
                                    dict(cell="gru", hidden=16, embedding=6, layers=2),
                                    dict(cell="gru", hidden=10, embedding=4, feedback=True),
                                    dict(cell="vanilla", hidden=16, embedding=6, activation="relu"),
                                    dict(cell="residual", hidden=16, embedding=6, layers=2),
                                    dict(cell="residual", residual="before", hidden=16, embedding=6),
                                    dict(cell="input", hidden=16, embedding=6),
                                    dict(cell="forget", hidden=16, embedding=6, layers=2, activation="relu"),
                                    dict(cell="peephole-lstm", hidden=16, embedding=6, layers=2),
                                    dict(cell="peephole-lstm", hidden=12, embedding=4, feedback=True, layers=2),
                                    dict(LAYERNORM, hidden=16, embedding=6),
                                    dict(LAYERNORM, hidden=12, embedding=5, layers=3),
                                    dict(LAYERNORM, hidden=12, embedding=4, feedback=True, layers=2),
                                    dict(cell="projected-lstm", hidden=16, embedding=6, proj_size=5),
                                    dict(cell="projected-lstm", hidden=12, embedding=5, layers=3),
                                    dict(cell="projected-lstm", hidden=12, embedding=4, proj_size=7, feedback=True,
                                         layers=2)],
                         ids=["lstm", "lstm-three-layers", "lstm-feedback", "lstm-feedback-two-layers",
                              "gru-two-layers", "gru-feedback", "vanilla-relu", "residual-after", "residual-before",
                              "input", "forget-relu", "peephole-two-layers", "peephole-feedback-two-layers",
                              "layernorm", "layernorm-three-layers", "layernorm-feedback-two-layers", "projected",
                              "projected-three-layers", "projected-feedback-two-layers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_models_sample_the_same_tokens_both_ways(config, dtype):
    model = language_model(vocab=11, dtype=dtype, **config)
    assert generation.compiled_refusal(model) is None
    for seed, temperature, top_k in ((0, 1.0, None), (1, 0.7, 3), (2, 0.0, None)):
        py, cc, py_state, cc_state = both(model, torch.tensor([1, 2]), 200, temperature, top_k, seed)
        assert py.tolist() == cc.tolist()
        assert torch.equal(py_state, cc_state)


@needs_module
@pytest.mark.parametrize("config", [dict(cell="peephole-lstm"), LAYERNORM, dict(cell="projected-lstm")],
                         ids=["peephole", "layernorm", "projected"])
def test_the_new_lstms_at_the_default_size_sample_the_same_characters_both_ways(config):
    model = language_model(vocab=65, **config)  # embedding 64, one layer of 512 (P = 256 when projected)
    assert generation.compiled_refusal(model) is None
    for seed, temperature, top_k in ((0, 0.8, None), (1, 1.0, 5)):
        py, cc, py_state, cc_state = both(model, torch.tensor([3, 7, 11]), 150, temperature, top_k, seed)
        assert py.tolist() == cc.tolist()
        assert torch.equal(py_state, cc_state)
        assert len(set(py.tolist())) > 1 and 0 not in py.tolist()


@needs_module
def test_the_step_refuses_a_family_without_the_extras_it_reads(monkeypatch):
    model = language_model(hidden=8, embedding=4, cell="peephole-lstm")
    module, extension = EXTENSIONS[generation.MODULE], generation.compiled.extension
    calls = []

    class Dropping:  # hands the C++ step everything but the peephole weights (argument 9: the extras)
        def generate(self, *args):
            calls.append(args[9])
            return module.generate(*args[:9], [{} for _ in args[9]], *args[10:])

    monkeypatch.setattr(generation.compiled, "extension",
                        lambda name: Dropping() if name == generation.MODULE else extension(name))
    with pytest.raises(ValueError, match="layer 0 \\(peephole-lstm\\) needs the extra peephole"):
        sample(model, torch.tensor([1]), 5, implementation="compiled")
    assert list(calls[0][0]) == ["peephole"]


@needs_module
def test_auto_takes_the_compiled_loop_where_it_serves(monkeypatch):
    model = language_model(hidden=8, embedding=4)
    calls = []
    module = EXTENSIONS[generation.MODULE]

    class Spy:
        def generate(self, *args):
            calls.append(len(args))
            return module.generate(*args)

    real = generation.compiled.extension
    monkeypatch.setattr(generation.compiled, "extension",
                        lambda name=generation.compiled.NAME: Spy() if name == generation.MODULE else real(name))
    sample(model, torch.tensor([1]), 5)
    assert calls


@pytest.mark.parametrize("config,reason", [(dict(cell="feedback", feedback=True), "OutputFeedbackCell"),
                                           (dict(depth=2), "deep transition"), (dict(activation="elu"), "tanh or relu"),
                                           (dict(gate_activation="hard_sigmoid"), "sigmoid"),
                                           (dict(cell="peephole-lstm", gate_activation="hard_sigmoid"), "sigmoid"),
                                           (dict(cell="projected-lstm", zoneout=0.1), "zoneout"),
                                           (dict(cell="layernorm-lstm", state_read=False), "reads_state"),
                                           (dict(zoneout=0.1), "zoneout"), (dict(state_read=False), "reads_state")])
def test_cells_it_does_not_serve_fall_back_to_the_python_loop(config, reason):
    model = language_model(hidden=8, embedding=4, **config)
    assert reason in generation.compiled_refusal(model)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    auto = sample(model, torch.tensor([1]), 30, 1.0, None, g1)
    python = sample(model, torch.tensor([1]), 30, 1.0, None, g2, implementation="python")
    assert auto.tolist() == python.tolist()
    with pytest.raises(ValueError, match=f"compiled generation cannot serve this model: .*{reason}"):
        sample(model, torch.tensor([1]), 3, implementation="compiled")


def test_without_the_module_auto_is_the_python_loop(monkeypatch):
    monkeypatch.setattr(generation.compiled, "extension", lambda name: None)
    model = language_model(hidden=8, embedding=4)
    assert "not built" in generation.compiled_refusal(model)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample(model, torch.tensor([1]), 20, 1.0, 2, g1).tolist() == \
        sample(model, torch.tensor([1]), 20, 1.0, 2, g2, implementation="python").tolist()
    with pytest.raises(ValueError, match="not built"):
        sample(model, torch.tensor([1]), 3, implementation="compiled")


@pytest.mark.parametrize("kwargs,match", [(dict(temperature=-1.0), "temperature must be a finite number >= 0"),
                                          (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
                                          (dict(top_k=0), "top_k must be None or an int >= 1"),
                                          (dict(implementation="fast"), "implementation must be one of")])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    model = language_model(hidden=8, embedding=4)
    with pytest.raises(ValueError, match=match):
        sample(model, torch.tensor([1]), 3, **kwargs)


@needs_module
def test_zero_length_and_the_model_mode_are_kept():
    model = language_model(hidden=8, embedding=4).train()
    assert sample(model, torch.tensor([1]), 0, implementation="compiled").tolist() == []
    assert model.training  # sample switches to eval for the loop and back


def test_the_generation_bench_times_every_loop_and_the_floor(tmp_path, capsys):
    text = write_play(tmp_path / "play.txt")
    run = tmp_path / "run"
    assert main(["train", "--text", str(text), "--hidden", "16", "--embedding", "8", "--batch-size", "4", "--seq-len",
                 "12", "--eval-tokens", "100", "--threads", "1", "--steps", "2", "--samples", "0",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    json_file = tmp_path / "generation.json"
    assert main(["bench", "--generation", str(run), "--generation-length", "20", "--reps", "2",
                 "--generation-top-k", "3", "--json", str(json_file)]) == 0
    out = capsys.readouterr().out
    assert "floor, one pass over the weights per token" in out and "load average" in out
    assert "| candidate | us/token | min-max | tokens/s | x floor |" in out  # the one table printer's Markdown
    report = json.loads(json_file.read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == (["rnnlab compiled"] if BUILT else []) + ["rnnlab python", "torch.nn.LSTM loop"]
    for row in report["rows"]:
        assert row["us_per_char"] > 0 and row["same_tokens_as_python"]
    vocab = len(json.loads((run / "vocabulary.json").read_text())["tokens"])
    model = build_model(LanguageConfig(hidden=16, embedding=8), vocab)
    assert report["weights_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    # both floors are measured (bandwidth timings): only their presence is tested, never their order
    assert report["floor_us_per_char"]["cached"] > 0 and report["floor_us_per_char"]["large"] > 0


def test_the_generation_bench_refuses_a_run_that_is_not_a_language_model(tmp_path, capsys):
    assert main(["bench", "--generation", str(tmp_path)]) != 0
    assert "rnnlab: error:" in capsys.readouterr().err
    assert main(["bench", "--generation", str(tmp_path), "--generation-length", "1000001"]) == 2  # before the run
    assert capsys.readouterr().err == "rnnlab: error: --generation-length must be at most 1,000,000; got 1,000,001\n"


def test_under_autocast_the_python_loop_serves():
    model = language_model(hidden=8, embedding=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in generation.compiled_refusal(model)


@needs_module
def test_a_temperature_that_overflows_the_logits_fails_as_torch_multinomial_does():
    model = language_model(hidden=8, embedding=4)
    for implementation in ("python", "compiled"):
        with pytest.raises(RuntimeError, match="probability tensor contains either"):
            sample(model, torch.tensor([1]), 5, 1e-40, None, torch.Generator(), implementation=implementation)


@pytest.mark.parametrize("flags, named", [(["--sizes", "1x8x8x10", "--cells", "lstm"], "--sizes, --cells"),
                                          (["--impls", "fused"], "--impls"), (["--max-call-s", "1"], "--max-call-s")])
def test_the_generation_bench_refuses_the_grids_flags_it_does_not_read(tmp_path, capsys, flags, named):
    """They were silently ignored: `--generation RUN --cells gru` timed the run's own model, as without them."""
    assert main(["bench", "--generation", str(tmp_path), *flags]) == 2  # before the run is read
    assert capsys.readouterr().err == (f"rnnlab bench: error: --generation: {named} set the grid of "
                                       f"implementations, which sampling does not read (it takes --reps, --threads, "
                                       f"--seed and the --generation-* flags)\n")
