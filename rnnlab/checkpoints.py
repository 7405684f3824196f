"""The run directory: configuration, checkpoints and the metrics log of one training run.

    RUN_DIR/config.json               what was trained (task, task config, TrainConfig)
    RUN_DIR/checkpoint.json           the manifest: step and the checkpoint files with their sha256
    RUN_DIR/model-0001000.safetensors the weights at that step
    RUN_DIR/trainer-0001000.pt        optimiser, RNG, data position, carried state, early stopping
    RUN_DIR/best.safetensors          the weights of the best evaluation so far
    RUN_DIR/metrics.jsonl             one JSON record per line
    RUN_DIR/loss.png                  the loss curves

Every file is written to a temporary name and renamed into place (`os.replace` is atomic), and a
checkpoint becomes current only when the manifest naming it is renamed into place, so a crash at
any moment leaves the previous checkpoint whole. The manifest's checksums catch a file that was
truncated or damaged later; every error names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

__all__ = ["CheckpointError", "RunDir", "write_atomic", "check_weights"]

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint or run file that is missing, corrupt, or does not match what is loading it."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_weights(file: Path, weights: dict[str, torch.Tensor], model: nn.Module) -> None:
    """CheckpointError naming the file and every key or shape that does not fit the model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    problems = []
    if missing := sorted(set(expected) - set(found)):
        problems.append(f"missing {missing}")
    if unexpected := sorted(set(found) - set(expected)):
        problems.append(f"unexpected {unexpected}")
    problems += [f"{k} is {found[k]} in the file but {expected[k]} in the model"
                 for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    if problems:
        raise CheckpointError(f"checkpoint {file} does not match the model (was it trained with another "
                              f"config?): " + "; ".join(problems))


class RunDir:
    """One run's folder. Nothing here knows about models beyond state dicts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.json")
    manifest_file = property(lambda self: self.path / "checkpoint.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    best_file = property(lambda self: self.path / "best.safetensors")

    def has_checkpoint(self) -> bool:
        return self.manifest_file.is_file()

    # --- JSON -----------------------------------------------------------------------------------

    def write_json(self, name: str, value: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / name, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, name: str) -> Any:
        file = self.path / name
        if not file.is_file():
            raise CheckpointError(f"run directory {self.path}: {name} is missing (is this a run directory?)")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{file} is corrupt: not valid JSON ({error})") from None

    # --- checkpoints ----------------------------------------------------------------------------

    def save(self, step: int, weights: dict[str, torch.Tensor], trainer_state: dict[str, Any]) -> Path:
        """Write the weights and trainer state of `step`, then commit them in the manifest and
        remove the files of older checkpoints. Returns the weights file."""
        self.path.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        blobs = {"weights": (f"model-{step:07d}.safetensors", _to_safetensors(weights)),
                 "trainer": (f"trainer-{step:07d}.pt", buffer.getvalue())}
        for name, data in blobs.values():
            write_atomic(self.path / name, data)
        manifest = {"format": FORMAT, "step": step,
                    "files": {role: {"name": name, "sha256": _sha256(data)} for role, (name, data) in blobs.items()}}
        self.write_json(self.manifest_file.name, manifest)
        keep = {name for name, _ in blobs.values()}
        for old in list(self.path.glob("model-*.safetensors")) + list(self.path.glob("trainer-*.pt")):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return self.path / blobs["weights"][0]

    def load(self, device: str | torch.device = "cpu") -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        """(step, weights, trainer_state) of the current checkpoint, each file verified."""
        manifest = self.read_json(self.manifest_file.name)
        try:
            step, files = int(manifest["step"]), manifest["files"]
            if manifest.get("format") != FORMAT:
                raise CheckpointError(f"{self.manifest_file} has format {manifest.get('format')!r}; this rnnlab "
                                      f"reads format {FORMAT}")
            weights_data = self._verified(files["weights"])
            trainer_data = self._verified(files["trainer"])
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{self.manifest_file} is corrupt: missing or malformed entry {error}") from None
        weights_file, trainer_file = self.path / files["weights"]["name"], self.path / files["trainer"]["name"]
        weights = _from_safetensors(weights_file, weights_data, device)
        try:
            trainer_state = torch.load(io.BytesIO(trainer_data), map_location=device, weights_only=True)
        except Exception as error:  # torch raises several types for a damaged pickle
            raise CheckpointError(f"{trainer_file} is corrupt: {error}") from None
        if not isinstance(trainer_state, dict) or trainer_state.get("step") != step:
            raise CheckpointError(f"{trainer_file} does not belong to the checkpoint of step {step} named in "
                                  f"{self.manifest_file}")
        return step, weights, trainer_state

    def _verified(self, entry: dict) -> bytes:
        file = self.path / entry["name"]
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing (named in {self.manifest_file})")
        data = file.read_bytes()
        if _sha256(data) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: its sha256 {_sha256(data)[:12]}... does not "
                                  f"match {entry['sha256'][:12]}... recorded in {self.manifest_file}")
        return data

    def save_weights(self, file: Path, weights: dict[str, torch.Tensor]) -> None:
        write_atomic(file, _to_safetensors(weights))

    def load_weights(self, file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        if not file.is_file():
            raise CheckpointError(f"weights file {file} is missing")
        return _from_safetensors(file, file.read_bytes(), device)

    # --- metrics log ----------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        records = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to `step`: a resumed run rewrites what came after its checkpoint."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        write_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept).encode())


def _to_safetensors(weights: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in weights.items()})


def _from_safetensors(file: Path, data: bytes, device) -> dict[str, torch.Tensor]:
    try:
        weights = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error type for a damaged header
        raise CheckpointError(f"{file} is corrupt: not a readable safetensors file ({error})") from None
    return {k: v.to(device) for k, v in weights.items()}
