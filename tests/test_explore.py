"""`rnnlab explore`: the page's embedded data (pure Python), and the page itself in a real headless
Chromium driven by playwright: offline, no console errors, the unit picker recolours the text, and
the page's own JavaScript cell agrees with PyTorch for every ladder cell of the language task.

The browser is Debian's chromium-headless-shell (or chromium), installed by the Makefile's set-up
step; these tests skip, with the reason, only where none can be found."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab import cli
from rnnlab.data.text import read_text
from rnnlab.explore import correlated_units, feature_values, read_page_data, saturation, trace_language
from rnnlab.explore.page import dequantised
from rnnlab.tasks import load_weights, open_run
from rnnlab.tasks.language import next_token_logits

ROOT = Path(__file__).resolve().parents[1]
TYPED = "ROMEO: Is the day so young?\nJULI"  # what the browser tests type into the live model
TINY = ["--hidden", "12", "--embedding", "6", "--steps", "2", "--batch-size", "4", "--seq-len", "16", "--threads", "1",
        "--eval-every", "2", "--checkpoint-every", "2", "--samples", "0", "--seed", "1"]
# every cell of the ladder the language task trains, and the stacked / fed-back variants
CELLS = {"lstm": [], "gru": [], "vanilla": [], "residual": [], "input": [], "forget": [],
         "feedback": ["--feedback"], "lstm-2-layers-feedback": ["--layers", "2", "--feedback"],
         "gru-2-layers": ["--layers", "2"]}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(read_text()[:5000], encoding="utf-8")
    return path


_runs: dict[str, Path] = {}


def trained(name: str, text_file: Path, tmp_path_factory) -> Path:
    """A run of a tiny language model with the cell `name` (trained two steps: enough to be a run)."""
    if name not in _runs:
        out = tmp_path_factory.mktemp("runs") / name
        cell = name.split("-")[0]
        argv = ["train", "--text", str(text_file), "--cell", cell, *TINY, *CELLS[name], "--out", str(out)]
        assert cli.main(argv) == 0
        _runs[name] = out
    return _runs[name]


def page_of(name: str, text_file: Path, tmp_path_factory, length: int = 300) -> Path:
    run = trained(name, text_file, tmp_path_factory)
    out = run / "explore.html"
    if not out.exists():
        assert cli.main(["explore", str(run), "--length", str(length), "--out", str(out)]) == 0
    return out


def half(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), dtype="<f2").reshape(entry["shape"])


# --- pure Python ---------------------------------------------------------------------------------


def test_page_embeds_the_passage_statistics_and_float16_weights(text_file, tmp_path_factory, capsys):
    page_file = page_of("lstm", text_file, tmp_path_factory)
    assert "runs in the page" in capsys.readouterr().out
    page = page_file.read_text(encoding="utf-8")
    data = read_page_data(page)
    task, _ = open_run(page_file.parent)
    load_weights(task, page_file.parent)
    H, V = 12, len(task.vocabulary)
    assert data["vocabulary"] == task.vocabulary.tokens and data["cell"]["name"] == "lstm"
    assert data["cell"]["gates"] == ["i", "f", "o"] and data["cell"]["quantities"] == ["s_bar", "s"]
    # the default passage: the start of the run's held-out text
    passage = data["passage"]
    assert passage["ids"] == task.val_ids[:300].tolist()
    assert "".join(passage["tokens"]) == task.vocabulary.decode(task.val_ids[:300])
    probs = np.array(passage["top_probs"])
    assert probs.shape == (300, 5) and (np.diff(probs, axis=1) <= 0).all() and (probs.sum(1) <= 1 + 1e-3).all()
    # the weights are the run's, rounded to float16
    cell = task.model.core.layers[0].cell
    layer = data["model"]["layers"][0]
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert np.array_equal(half(layer[name]), getattr(cell, name).detach().half().numpy())
    assert half(data["model"]["readout_weight"]).shape == (V, H)
    # statistics: saturation fractions per unit, correlations against numpy's
    sat = data["stats"][0]["saturation"]
    for gate in ("i", "f", "o"):
        left, right = np.array(sat[gate]["left"]), np.array(sat[gate]["right"])
        assert left.shape == (H,) and ((left >= 0) & (right >= 0) & (left + right <= 1)).all()
    trace = trace_language(dequantised(task.model), task.val_ids[:300])
    values = trace.layers[0]["quantities"]["s_bar"]
    features = feature_values(passage["tokens"])
    for entry in data["stats"][0]["correlations"]["s_bar"]:
        unit, r = entry["units"][0]
        assert r == pytest.approx(np.corrcoef(values[:, unit], features[entry["feature"]])[0, 1], abs=1e-3)
        assert abs(r) >= max(abs(u[1]) for u in entry["units"]) - 1e-9


def test_page_is_self_contained(text_file, tmp_path_factory):
    page = page_of("lstm", text_file, tmp_path_factory).read_text(encoding="utf-8")
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?):|//[a-z0-9-]+(?:\.[a-z0-9-]+)+/", page), "an external URL"
    assert not re.search(r"(?i)<(?:link|img|iframe|object|embed)\b|\bsrc\s*=|@import|url\(", page), "a loaded resource"
    assert page.count("<script") == 2  # the embedded data and the inline program, nothing fetched


def test_trace_matches_the_model_and_the_equations(text_file, tmp_path_factory):
    for name in ("lstm", "gru-2-layers"):
        task, _ = open_run(trained(name, text_file, tmp_path_factory))
        ids = task.val_ids[:40]
        trace = trace_language(task.model, ids)
        logits, state = next_token_logits(task.model.eval(), ids[None])
        assert np.allclose(trace.logits, logits[0].detach().numpy(), atol=1e-5)
    cell = task.model.core.layers[0].cell  # the GRU's r gate at step 0, from the zero state, by hand
    x = task.model.input_map(ids[:1])
    r = torch.sigmoid(x @ cell.weight_ih[:12].T + cell.bias_ih[:12] + cell.bias_hh[:12])
    assert np.allclose(trace_language(task.model, ids).layers[0]["gates"]["r"][0], r[0].detach().numpy(), atol=1e-6)


def test_features_correlations_and_saturation_by_hand():
    f = feature_values(list('a "Bc"\nd(e)'))
    assert f["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]
    assert f["inside quotes"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert f["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert f["vowel"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    values = np.stack([f["position in line"] * 2 + 1, -f["vowel"], np.zeros(11)], axis=1)
    found = {e["feature"]: e["units"] for e in correlated_units(values, f, top=2)}
    assert found["position in line"][0] == [0, 1.0] and found["vowel"][0] == [1, -1.0]
    assert saturation(np.array([[0.05, 0.5], [0.95, 0.5], [0.5, 0.99], [0.0, 0.5]])) == \
        {"left": [0.5, 0.0], "right": [0.25, 0.25]}


def test_explore_command_errors_are_one_line(text_file, tmp_path_factory, tmp_path, capsys):
    run = trained("lstm", text_file, tmp_path_factory)
    capsys.readouterr()  # the training's output, where this test trained the run
    (tmp_path / "mine.html").write_text("my own page")
    (tmp_path / "empty.txt").write_text("")
    for argv, message in (
        (["explore", str(run), "--text", str(text_file), "--prompt", "hi"], "--text and --prompt exclude each other"),
        (["explore", str(tmp_path / "nowhere")], "which does not exist"),
        (["explore", str(run), "--text", str(tmp_path / "none.txt")], "--text must be a UTF-8 text file"),
        # a folder "did not exist", an empty file "held no token", and a folder as --out was "Is a directory"
        (["explore", str(run), "--text", str(tmp_path)], f"got {str(tmp_path)!r}, which is a folder"),
        (["explore", str(run), "--text", str(tmp_path / "empty.txt")], "empty.txt', which is empty"),
        (["explore", str(run), "--out", str(tmp_path)], f"--out {str(tmp_path)!r} is a folder"),
        # below a file: "Not a directory", naming no flag, after the page was built
        (["explore", str(run), "--out", str(tmp_path / "mine.html" / "p.html")],
         f"cannot write --out {tmp_path / 'mine.html' / 'p.html'}: {tmp_path / 'mine.html'} is not a folder"),
        (["explore", str(run), "--length", "0"], "--length must be an int >= 1"),
        (["explore", str(run), "--length", "99999999999"], "--length must be at most 1,000,000; got 99,999,999,999"),
        (["explore", str(run), "--out", str(tmp_path / "mine.html")], "is not an explore page"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(("rnnlab: error: ", "rnnlab explore: error: ")), err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "mine.html").read_text() == "my own page"
    assert cli.main(["explore", str(run), "--prompt", "To be, or not", "--out", str(tmp_path / "p.html")]) == 0
    assert read_page_data((tmp_path / "p.html").read_text())["passage"]["tokens"] == list("To be, or not")


def test_a_passage_outside_the_vocabulary_is_named_in_a_note_as_sample_does(text_file, tmp_path_factory, tmp_path,
                                                                            capsys):
    """Characters the run never saw are read as <unk>; the page was written without a word about them."""
    run = trained("lstm", text_file, tmp_path_factory)
    capsys.readouterr()
    prompt = "To be \u20ac\u20ac or \u2713"
    assert cli.main(["explore", str(run), "--prompt", prompt, "--out", str(tmp_path / "p.html")]) == 0
    err = capsys.readouterr().err
    assert "note: the prompt's ['\u20ac', '\u2713'] are not in the vocabulary; the model reads them as <unk>" in err
    assert cli.main(["sample", str(run), "--prompt", prompt, "--length", "2"]) == 0
    assert "note: the prompt's ['\u20ac', '\u2713'] are not in the vocabulary" in capsys.readouterr().err  # the same
    (tmp_path / "passage.txt").write_text("To be \u2713", encoding="utf-8")
    passage = ["--text", str(tmp_path / "passage.txt"), "--out", str(tmp_path / "t.html")]
    assert cli.main(["explore", str(run), *passage]) == 0
    assert "passage.txt's ['\u2713'] are not in the vocabulary" in capsys.readouterr().err
    assert cli.main(["explore", str(run), "--prompt", "To be", "--out", str(tmp_path / "p.html")]) == 0
    assert "note" not in capsys.readouterr().err


# --- in a real browser ---------------------------------------------------------------------------


def chromium() -> str | None:
    """The headless Chromium to drive: $RNNLAB_CHROMIUM, the system's, or the one the Makefile unpacked."""
    candidates = [os.environ.get("RNNLAB_CHROMIUM"), shutil.which("chromium-headless-shell"),
                  "/usr/lib/chromium/chromium-headless-shell",
                  str(ROOT / ".cache/browser/usr/lib/chromium/chromium-headless-shell"),
                  shutil.which("chromium"), "/usr/lib/chromium/chromium"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    executable = chromium()
    if executable is None:
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell; `make .venv/.installed` tries)")
    with sync_api.sync_playwright() as p:
        env = None
        if executable.startswith(str(ROOT / ".cache")):  # unpacked by the set-up step: its libraries are beside it
            cache = ROOT / ".cache/browser"
            libraries = [cache / "usr/lib/x86_64-linux-gnu", cache / "lib/x86_64-linux-gnu", cache / "usr/lib/chromium"]
            library_path = ":".join(map(str, libraries + [os.environ.get("LD_LIBRARY_PATH", "")]))
            env = {**os.environ, "LD_LIBRARY_PATH": library_path}
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"], timeout=60_000, env=env)
        yield browser
        browser.close()


def open_page(browser, page_file: Path):
    """The page opened from file://, with every console error and request recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors, page.requests = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requests.append(r.url))
    url = page_file.resolve().as_uri()
    page.goto(url, timeout=60_000)
    page.wait_for_function("window.explore && window.explore.ready", timeout=60_000)
    page.url_opened = url
    return page


def assert_offline_and_clean(page):
    assert page.errors == []
    assert page.requests == [page.url_opened], "the page asked for something besides itself"


@pytest.mark.parametrize("name", list(CELLS))
def test_the_page_runs_the_model_as_pytorch_does(browser, text_file, tmp_path_factory, name):
    page_file = page_of(name, text_file, tmp_path_factory)
    page = open_page(browser, page_file)
    page.click("#live-input")
    page.keyboard.type(TYPED)
    live = page.evaluate("""() => ({
        state: window.explore.live.state.map((layer) => Object.fromEntries(
            Object.entries(layer).map(([k, v]) => [k, Array.from(v)]))),
        probs: Array.from(window.explore.live.probs), text: window.explore.live.text,
        passage: Object.fromEntries(Object.entries(window.explore.trace()[0].quantities).map(
            ([k, v]) => [k, Array.from(v)]))})""")
    assert live["text"] == TYPED
    task, _ = open_run(page_file.parent)
    load_weights(task, page_file.parent)
    model = dequantised(task.model)  # the page's weights: float16, so float32 tolerances apply
    ids = task.vocabulary.encode("\n" + TYPED)
    with torch.no_grad():
        logits, state = next_token_logits(model, ids[None])
    probs = torch.softmax(logits[0, -1].double(), -1).numpy()
    np.testing.assert_allclose(live["probs"], probs, atol=2e-6)
    for layer, expected in zip(live["state"], state):
        parts = expected if isinstance(expected, tuple) else (expected,)
        names = ("s_bar", "s") if len(parts) == 2 else ("s",)
        for part_name, part in zip(names, parts):
            np.testing.assert_allclose(layer[part_name], part[0].numpy(), atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # the run's own float32 weights: what float16 storage costs, at float16's tolerance
        own, _ = next_token_logits(task.model.eval(), ids[None])
    np.testing.assert_allclose(live["probs"], torch.softmax(own[0, -1].double(), -1).numpy(), atol=5e-3)
    # and the passage the page computed on load, against the Python trace
    data = read_page_data(page_file.read_text(encoding="utf-8"))
    trace = trace_language(model, torch.tensor(data["passage"]["ids"]))
    for quantity, values in live["passage"].items():
        np.testing.assert_allclose(np.array(values).reshape(-1, 12), trace.layers[0]["quantities"][quantity],
                                   atol=1e-4, rtol=1e-5)
    assert_offline_and_clean(page)
    page.close()


def test_picking_a_unit_recolours_the_text_and_the_page_generates(browser, text_file, tmp_path_factory):
    page_file = page_of("lstm", text_file, tmp_path_factory)
    page = open_page(browser, page_file)
    colours = ("() => Array.from(document.querySelectorAll('#text .ch')).slice(0, 80)"
               ".map((s) => s.style.backgroundColor)")
    before, unit = page.evaluate(colours), page.evaluate("window.explore.view.unit")
    other = page.locator(f"#correlations .unit-pick:not([data-unit='{unit}'])").first
    picked = int(other.get_attribute("data-unit"))
    other.click()
    assert page.evaluate("window.explore.view.unit") == picked and page.input_value("#unit") == str(picked)
    after = page.evaluate(colours)
    assert after != before and len(set(after)) > 3
    page.keyboard.press("ArrowRight")  # arrow keys step through the units
    assert page.evaluate("window.explore.view.unit") == (picked + 1) % 12
    # brushing a range lists units and marks where else they fire
    spans = page.locator("#text .ch")
    spans.nth(20).hover()
    page.mouse.down()
    spans.nth(30).hover()
    page.mouse.up()
    assert "steps 20\u201330" in page.inner_text("#brush-result")
    assert page.locator("#brush-result .unit-pick").count() >= 1
    # greedy generation in the page is PyTorch's greedy sampling with the page's weights
    page.fill("#live-input", "KING")
    page.fill("#temperature", "0")
    page.fill("#gen-length", "20")
    page.click("#generate")
    generated = page.input_value("#live-input")
    task, _ = open_run(page_file.parent)
    load_weights(task, page_file.parent)
    assert generated == "KING" + task.sample_text(dequantised(task.model), "KING", 20, temperature=0)
    page.fill("#temperature", "1.0")
    page.click("#generate")
    assert len(page.input_value("#live-input")) == len(generated) + 20
    assert_offline_and_clean(page)
    page.close()


# --- tasks other than language: held-out examples, views computed in Python ----------------------


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "copy"
    assert cli.main(["train", "copy", "--cell", "gru", "--hidden", "8", "--T", "6", "--steps", "2", "--eval-every", "2",
                     "--checkpoint-every", "2", "--threads", "1", "--out", str(out)]) == 0
    assert cli.main(["explore", str(out), "--length", "3"]) == 0
    return out


def test_other_tasks_embed_the_traces_of_held_out_examples(copy_run, capsys, tmp_path):
    data = read_page_data((copy_run / "explore.html").read_text(encoding="utf-8"))
    assert data["model"] is None and data["cell"]["gates"] == ["r", "z"] and len(data["passage"]["examples"]) == 3
    task, _ = open_run(copy_run)
    load_weights(task, copy_run)
    inputs = task.eval_inputs[:3]
    outputs, _ = task.model.eval().core(task.model.input_map(inputs))  # (3, T, 8): the runner's own states
    layer = data["trace"][0]["quantities"]["s"]
    stored = np.frombuffer(base64.b64decode(layer["data"]), dtype=np.uint8).reshape(layer["shape"])
    decoded = layer["low"] + stored * (layer["high"] - layer["low"]) / 255
    np.testing.assert_allclose(decoded, outputs.detach().reshape(-1, 8).numpy(),
                               atol=(layer["high"] - layer["low"]) / 500)
    assert cli.main(["explore", str(copy_run), "--prompt", "hi"]) == 2
    assert "--text and --prompt serve language runs" in capsys.readouterr().err
    bare = shutil.copytree(copy_run, tmp_path / "bare")
    for weights in bare.glob("*.safetensors"):
        weights.unlink()  # the refusal comes before the weights load (it came after)
    assert cli.main(["explore", str(bare), "--prompt", "hi"]) == 2
    assert "--text and --prompt serve language runs" in capsys.readouterr().err


def test_the_static_page_of_another_task_works_offline(browser, copy_run):
    page = open_page(browser, copy_run / "explore.html")
    colours = "() => Array.from(document.querySelectorAll('#text .ch')).map((s) => s.style.backgroundColor)"
    before = page.evaluate(colours)
    page.fill("#unit", str((page.evaluate("window.explore.view.unit") + 3) % 8))
    page.press("#unit", "Enter")
    assert page.evaluate(colours) != before
    assert page.locator(".example-head").count() == 3 and "copies" in page.inner_text("#text")
    assert page.locator("#live-input").count() == 0
    assert_offline_and_clean(page)
    page.close()


def test_a_bidirectional_run_is_refused_before_its_weights_load(tmp_path, capsys):
    """The page traces cells read one way: a --bidirectional sentiment run was refused after its weights
    loaded and its held-out examples ran."""
    run = tmp_path / "bi"
    assert cli.main(["train", "sentiment", "--bidirectional", "--members", "1", "--hidden", "4", "--embedding", "4",
                     "--batch-size", "8", "--steps", "1", "--threads", "1", "--out", str(run)]) == 0
    for weights in run.glob("*.safetensors"):
        weights.unlink()
    capsys.readouterr()
    assert cli.main(["explore", str(run)]) == 2
    err = capsys.readouterr().err
    assert "every layer must read the sequence one way" in err and "got a Bidirectional layer" in err, err


def test_forecast_examples_are_read_with_the_true_values_fed_back(tmp_path):
    from rnnlab.explore import held_out_examples, trace_core

    out = tmp_path / "forecast"
    assert cli.main(["train", "forecast", "--hidden", "6", "--steps", "1", "--eval-every", "1",
                     "--checkpoint-every", "1", "--threads", "1", "--out", str(out)]) == 0
    task, _ = open_run(out)
    load_weights(task, out)
    examples = held_out_examples(task, 2)
    assert len(examples) == 2 and examples[0].ys.shape == (1, len(examples[0].tokens), 1)
    start = task.n_train - task.normaliser.offset
    assert float(examples[0].ys[0, 0, 0]) == float(task.z[start - 1])  # y^{t-1} of the first step: the value before it
    layers, outputs = trace_core(task.model.core, examples[1].xs, examples[1].ys)
    expected, _ = task.model.eval().core(examples[1].xs, None, examples[1].ys)
    np.testing.assert_allclose(outputs.numpy(), expected.detach().numpy(), atol=1e-6)
    assert cli.main(["explore", str(out), "--length", "2"]) == 0
    assert len(read_page_data((out / "explore.html").read_text())["passage"]["examples"]) == 2


def test_the_page_shows_the_config_the_run_was_rebuilt_with(copy_run, tmp_path):
    """A config.json written before a field existed: the page shows what the field's absence means
    (the value the run trained with), not a hole, and not today's default."""
    old = tmp_path / "old-copy"
    shutil.copytree(copy_run, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["task_config"]["mix"], saved["task_config"]["chrono"]
    (old / "config.json").write_text(json.dumps(saved))
    assert cli.main(["explore", str(old), "--length", "2", "--out", str(tmp_path / "page.html")]) == 0
    shown = read_page_data((tmp_path / "page.html").read_text(encoding="utf-8"))["run"]["config"]
    assert shown["task_config"]["mix"] == 0.0 and shown["task_config"]["chrono"] is False
    assert shown["train"] == saved["train"] and shown["task"] == "copy"
