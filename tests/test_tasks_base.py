"""The task contract: every registered task is a Task, capabilities are declared, incomplete tasks fail early."""

import pytest

from rnnlab.cli import main
from rnnlab.tasks import TASKS, Task, TextGenerator, capabilities, commands_for
from rnnlab.training import TrainConfig


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_is_a_task(name):
    cls = TASKS[name]
    assert issubclass(cls, Task) and cls.name == name
    assert isinstance(cls.train_defaults, TrainConfig) and cls.description


def test_capabilities_come_from_the_declaration():
    assert capabilities(TASKS["language"]) == ["sample"]
    assert capabilities(TASKS["digits"]) == []
    assert commands_for(TASKS["digits"]) == "rnnlab eval"
    assert issubclass(TASKS["language"], TextGenerator) and not issubclass(TASKS["sentiment"], TextGenerator)


def test_a_task_missing_a_required_attribute_fails_when_defined():
    with pytest.raises(TypeError, match="must define .*train_defaults"):
        class Incomplete(Task):  # noqa: F841
            name, description, Config, unit = "x", "x", object, "item"


def test_a_task_missing_a_method_cannot_be_built():
    class NoReport(Task):
        name, description, Config, unit, train_defaults = "x", "x", object, "item", TrainConfig()

        def __init__(self, config):
            self.config = config

        def batches(self, seed):
            return []

        loss = staticmethod(lambda model, batch, state, tf: (0.0, state, 1))

        def evaluate(self, model, full=False):
            return {}

        def describe(self):
            return ""

    with pytest.raises(TypeError, match="report"):
        NoReport(None)


def test_sample_on_a_task_that_cannot_generate_says_so(tmp_path, capsys):
    run = tmp_path / "adding"
    assert main(["train", "adding", "--T", "5", "--hidden", "4", "--steps", "2", "--eval-every", "1",
                 "--eval-size", "8", "--batch-size", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not generate text" in err[0] and "rnnlab eval" in err[0]


def test_a_text_generator_declares_what_another_engine_needs():
    """`rnnlab sample --engine onnxruntime` needs the ids the model reads first and the text of the ids it
    chose: TextGenerator declares them (it read the language task's vocabulary and config.level); a
    text generator without them cannot be built, naming them."""

    class Sampler(TextGenerator):
        def sample_text(self, model, prompt, length, temperature=1.0, top_k=None, seed=0):
            return ""

        def unknown_in(self, prompt):
            return []

    with pytest.raises(TypeError, match="continuation.*prompt_ids|prompt_ids.*continuation"):
        Sampler()
    language = TASKS["language"]
    assert not ({"prompt_ids", "continuation"} & language.__abstractmethods__)
