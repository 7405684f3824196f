"""Entry checks shared by the core: one-line errors naming the argument, what was expected and what came.

A value of the wrong kind (a string where a number belongs, a number where a flag belongs) is a
TypeError; a value of the right kind out of range, or a tensor of the wrong shape, dtype or device,
a ValueError. Python would otherwise compare "0.2" with 0.0 and fail with a message that names
nothing, or take the string "False" for true.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable

import torch

__all__ = ["ArgumentError", "spelled", "with_article", "check_number", "check_flag", "check_tensor_like"]

_MARKED = re.compile(r"\{([a-z_]+(?:=\w+)?)\}")


def spelled(text: str, name: Callable[[str], str] = str) -> str:
    """`text` with each argument marked {like_this} (or {like_this=False}) as `name` spells it: by
    default its Python name, as a library user sets it."""
    return _MARKED.sub(lambda m: name(m.group(1)), text)


class ArgumentError(ValueError):
    """A value out of range, or refused together with another argument. The message names each
    argument as a {placeholder} (`{proj_size}`, or `{reads_state=False}` with its value), so a
    caller that set them under other names can say those (the CLI: the flags the user typed):
    str() names the Python arguments, `named(name)` what `name` makes of each placeholder."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(self.named(str))

    def named(self, name: Callable[[str], str]) -> str:
        return f"{self.where}: " + spelled(self.message, name)


def with_article(word: str) -> str:
    """`word` after the article its first letter takes, quotes skipped: "an 'adding'", "a 'copy'",
    "an int", "a Stacked" (by the letter, not the sound: rnnlab's words do not start with a silent
    h or a 'you' sound). Every message that names a thing it only knows at run time uses it."""
    first = word.lstrip("'\"`")[:1].lower()
    return f"{'an' if first and first in 'aeiou' else 'a'} {word}"


def _shown(value) -> str:
    return f"{type(value).__name__} {value!r}"


def check_number(where: str, name: str, value, *, integer: bool = False, optional: bool = False) -> None:
    """TypeError unless `value` is a real number (an int where `integer`; None where `optional`).
    bool is not a number here, nor is a string that looks like one."""
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{where}: {name} must be {expected}{' or None' if optional else ''}; got {_shown(value)}")


def check_flag(where: str, name: str, value) -> None:
    """TypeError unless `value` is True or False (the string 'False' would read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False; got {_shown(value)}")


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower precision torch.autocast computes in on this device type, where it is on."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, AttributeError):  # a device type autocast does not know
        pass
    return None


def check_tensor_like(where: str, name: str, tensor: torch.Tensor, weight: torch.Tensor) -> None:
    """ValueError unless `tensor` has the dtype and device of the weights it meets (under
    torch.autocast, the autocast dtype is accepted too: autocast's own outputs carry it)."""
    if tensor.device != weight.device:
        raise ValueError(f"{where}: {name} must be on {weight.device} like the weights; got {tensor.device} "
                         f"(move it with .to({str(weight.device)!r}))")
    if tensor.dtype != weight.dtype and tensor.dtype != _autocast_dtype(tensor.device.type):
        # a module converts to a floating-point dtype only: .to(torch.int64) is no advice for it
        module = f", or the module with .to({tensor.dtype})" if tensor.dtype.is_floating_point else ""
        raise ValueError(f"{where}: {name} must be {weight.dtype} like the weights; got {tensor.dtype} "
                         f"(convert it with .to({weight.dtype}){module})")
