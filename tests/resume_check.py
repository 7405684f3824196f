"""The resume check shared by the task tests: 6 steps straight equal 3 steps, a stop, and a resume."""

import torch


def assert_resume_matches(trainer, tmp_path):
    """trainer(steps, run_dir) -> (task, Trainer), built the same way each call."""
    straight, t = trainer(6, tmp_path / "a")
    t.fit()
    _, t = trainer(3, tmp_path / "b")
    t.fit()
    resumed, t = trainer(6, tmp_path / "b")
    t.resume()
    t.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
