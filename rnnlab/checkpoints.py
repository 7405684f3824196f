"""The run directory: configuration, checkpoints and the metrics log of one training run.

    RUN_DIR/rnnlab-run.json           the marker: this folder is an rnnlab run (written first)
    RUN_DIR/.rnnlab.lock              held (flock) by the process training into the folder; names its pid
    RUN_DIR/config.json               what was trained (task, task config, TrainConfig, data hashes)
    RUN_DIR/checkpoint.json           the manifest: step and the checkpoint files with their sha256
    RUN_DIR/model-0001000.safetensors the weights at that step
    RUN_DIR/trainer-0001000.pt        optimiser, RNG, data position, carried state, early stopping
    RUN_DIR/best.safetensors          the weights of the best evaluation so far
    RUN_DIR/metrics.jsonl             one JSON record per line
    RUN_DIR/loss.png                  the loss curves

Every file is written to a temporary name and renamed into place (`os.replace` is atomic), and a
checkpoint becomes current only when the manifest naming it is renamed into place, so a crash at
any moment leaves the previous checkpoint whole. The manifest's checksums catch a file that was
truncated or damaged later, and every safetensors file carries the sha256 of its tensors in its own
header (best.safetensors included), verified on loading; every error names the file and what is
wrong with it. A write that fails (a full disk) removes its temporary file and raises a WriteError;
temporaries left by a killed process are removed when the next run takes the lock.

A folder is a run directory when it holds the marker, or (runs made before the marker) both
config.json and checkpoint.json. Weights files written before checksums load unverified, with a
warning: their checkpoint's manifest still checks them, and refusing them would lose the run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import struct
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .errors import RnnlabError, RunDirError, RunLockedError, WriteError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

__all__ = ["CheckpointError", "RunDir", "write_atomic", "check_weights", "weights_digest"]

FORMAT = 1
MARKER = "rnnlab-run.json"
LOCK = ".rnnlab.lock"
TEMPORARY_PATTERN = ".*.tmp-*"
CHECKSUM_KEY = "rnnlab_sha256"  # in a safetensors header's __metadata__


class CheckpointError(RnnlabError, ValueError):
    """A checkpoint or run file that is missing, corrupt, or does not match what is loading it."""


def _write_error(path: Path, error: OSError) -> WriteError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied" if error.errno != errno.EROFS else "read-only file system"
    else:
        why = error.strerror or str(error)
    return WriteError(error.errno, f"cannot write {path}: {why}; the files written before it are intact")


@contextmanager
def _writing(path: Path):
    """OSError while writing `path` -> WriteError naming it."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise _write_error(path, error) from error


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so that a reader sees either the old file or the whole new one. A failed
    write (a full disk) removes its temporary file and raises WriteError; the old file stays."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # removed when the next run takes the lock
        raise _write_error(path, error) from error


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

    def weights_file(self, step: int) -> Path:
        return self.path / f"model-{step:07d}.safetensors"

    def trainer_file(self, step: int) -> Path:
        return self.path / f"trainer-{step:07d}.pt"

    marker_file = property(lambda self: self.path / MARKER)
    lock_file = property(lambda self: self.path / LOCK)

    def has_checkpoint(self) -> bool:
        return self.manifest_file.is_file()

    def is_run(self) -> bool:
        """The folder holds rnnlab's marker, or is a run made before the marker existed."""
        return self.marker_file.is_file() or (self.config_file.is_file() and self.manifest_file.is_file())

    # --- a new run, and the lock ----------------------------------------------------------------

    def check_new(self) -> None:
        """RunDirError unless a new run may start here: a folder that does not exist, an empty one,
        or a run of ours that never reached a checkpoint. Never overwrites a user's files."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file, not a folder; choose another --out")
        if not self.path.is_dir():
            return
        if self.has_checkpoint():
            raise RunDirError(f"run directory {self.path} already holds a run ({self.manifest_file.name}); continue it "
                              f"with --resume {self.path} or choose another --out")
        if self.is_run():
            return
        present = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        if present:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise RunDirError(f"--out {self.path} is an existing folder that is not an rnnlab run directory (it holds "
                              f"{shown}); rnnlab would overwrite it: choose a new or empty folder")

    def start_new(self) -> None:
        """Check that a new run may start here, then mark the folder as a run."""
        self.check_new()
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker_file.is_file():
            write_atomic(self.marker_file, (json.dumps({"rnnlab_run": FORMAT}) + "\n").encode())

    def check_resumable(self) -> None:
        """RunDirError unless this folder holds a run to continue."""
        if not self.path.is_dir():
            raise RunDirError(f"--resume {self.path}: no such run directory")
        if not self.is_run():
            raise RunDirError(f"--resume {self.path}: not an rnnlab run directory (no {MARKER} or config.json with "
                              f"{self.manifest_file.name})")
        if not self.has_checkpoint():
            raise RunDirError(f"--resume {self.path}: the run stopped before its first checkpoint; start it again "
                              f"with --out {self.path}")

    @contextmanager
    def locked(self, holder: str = "rnnlab"):
        """Hold the run directory's exclusive lock (re-entrant within a process). Another live
        process holding it: RunLockedError naming its pid, at once. The kernel drops the lock of a
        process that died, so a stale lock never blocks. On taking it, temporaries and unnamed
        checkpoint files left by a killed run are removed."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_file, "a+")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        warnings.warn(f"{self.path}: this file system cannot lock files; training unlocked "
                                      f"(do not start a second run in this folder)", stacklevel=3)
                    elif error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise _write_error(self.lock_file, error) from error
                    else:
                        pid, what = self._holder()
                        raise RunLockedError(f"run directory {self.path} is in use by process "
                                             f"{pid or '(unknown pid)'}{f' ({what})' if what else ''}; wait for it "
                                             f"to finish or choose another --out", pid) from None
            with _writing(self.lock_file):
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()} {holder}\n")
                handle.flush()
            _HELD[key] = [handle, 1]
            self.clean()
            try:
                yield
            finally:
                del _HELD[key]
        finally:
            handle.close()  # closing releases the flock

    def _holder(self) -> tuple[int | None, str]:
        """(pid, what) of the lock's holder, as it wrote them (briefly retried: it writes just after locking)."""
        for _ in range(10):
            try:
                words = self.lock_file.read_text().split(maxsplit=1)
                if words and words[0].isdigit():
                    return int(words[0]), (words[1].strip() if len(words) > 1 else "")
            except OSError:
                pass
            time.sleep(0.05)
        return None, ""

    def clean(self) -> list[Path]:
        """Remove what a killed or failed run left behind: temporary files, and checkpoint files
        the manifest does not name (never loaded). Only under the lock, and only in a run directory
        (never in a folder of the user's). Returns what was removed."""
        if not self.is_run():
            return []
        removed = list(self.path.glob(TEMPORARY_PATTERN))
        named: set[str] | None = set()
        if self.manifest_file.is_file():
            try:
                named = {entry["name"] for entry in self.read_json(self.manifest_file.name)["files"].values()}
            except (CheckpointError, KeyError, TypeError, AttributeError):
                named = None  # a damaged manifest: leave its files for the error that names it
        if named is not None:
            removed += [p for p in list(self.path.glob("model-*.safetensors")) + list(self.path.glob("trainer-*.pt"))
                        if p.name not in named]
        for file in removed:
            try:
                file.unlink(missing_ok=True)
            except OSError:
                pass
        return removed

    # --- JSON -----------------------------------------------------------------------------------

    def write_json(self, name: str, value: Any) -> None:
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / name, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, name: str) -> Any:
        file = self.path / name
        if not file.is_file():
            weights = any(self.path.glob("*.safetensors"))  # none: killed before its first checkpoint, not damaged
            if self.marker_file.is_file() and not self.has_checkpoint() and not weights:
                raise CheckpointError(f"run directory {self.path}: the run stopped before its first checkpoint, so it "
                                      f"has no {name} and no weights; start it again with --out {self.path}")
            raise CheckpointError(f"run directory {self.path}: {name} is missing (is this a run directory?)")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{file} is corrupt: not valid JSON ({error})") from None

    # --- checkpoints ----------------------------------------------------------------------------

    def save(self, step: int, weights: dict[str, torch.Tensor], trainer_state: dict[str, Any]) -> Path:
        """Write the weights and trainer state of `step`, then commit them in the manifest and
        remove the files of older checkpoints. Returns the weights file."""
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        blobs = {"weights": (self.weights_file(step).name, _to_safetensors(weights)),
                 "trainer": (self.trainer_file(step).name, buffer.getvalue())}
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
        except CheckpointError:
            raise
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{self.manifest_file} is corrupt: missing or malformed entry {error}") from None
        except ValueError:  # int() of a step that is no number
            raise CheckpointError(f"{self.manifest_file} is corrupt: step must be an int; "
                                  f"got {manifest['step']!r}") from None
        weights_file, trainer_file = self.path / files["weights"]["name"], self.path / files["trainer"]["name"]
        weights = _from_safetensors(weights_file, weights_data, device, legacy_ok=True)
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
        """The weights of a safetensors file, its checksum verified (a file written before checksums
        loads with a warning)."""
        if not file.is_file():
            raise CheckpointError(f"weights file {file} is missing")
        return _from_safetensors(file, file.read_bytes(), device, legacy_ok=False)

    # --- metrics log ----------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        with _writing(self.metrics_file):
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        records = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write
            if isinstance(record, dict):  # a line that is no record (edited by hand) is skipped alike
                records.append(record)
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to `step`: a resumed run rewrites what came after its checkpoint."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        write_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept).encode())


_HELD: dict[str, list] = {}  # realpath -> [open lock file, depth]: the run directories this process holds


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # the raw bytes via numpy: bytes(untyped_storage) walks them one Python call per byte (35 s for 5 MB)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _to_safetensors(weights: dict[str, torch.Tensor]) -> bytes:
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    return save_safetensors(weights, metadata={CHECKSUM_KEY: weights_digest(weights)})


def _metadata(data: bytes) -> dict:
    """The __metadata__ of a safetensors file's header ({} when absent or unreadable)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        metadata = header.get("__metadata__") or {}
        return metadata if isinstance(metadata, dict) else {}
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError):
        return {}


def _from_safetensors(file: Path, data: bytes, device, legacy_ok: bool) -> dict[str, torch.Tensor]:
    """Parse and verify. legacy_ok: a file without a checksum is fine (its manifest verified it)."""
    try:
        weights = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error type for a damaged header
        raise CheckpointError(f"{file} is corrupt: not a readable safetensors file ({error})") from None
    recorded = _metadata(data).get(CHECKSUM_KEY)
    if recorded is None:
        if not legacy_ok:
            warnings.warn(f"{file} carries no checksum (written by an older rnnlab); loaded unverified",
                          stacklevel=3)
    elif weights_digest(weights) != recorded:
        raise CheckpointError(f"{file} is corrupt: the sha256 of its tensors does not match the checksum in its "
                              f"header (damaged on disk?)")
    return {k: v.to(device) for k, v in weights.items()}
