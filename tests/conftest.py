"""Shared by every test file: the C++ loops (rnnlab/kernels/loops.cpp) compile in under a minute at
first use; tests never compile them. They use a cached build where one exists, else the Python loops."""

import pytest

from rnnlab.kernels import compiled

EXTENSIONS = {name: compiled.extension(name) if compiled.built(name) else None for name in compiled.MODULES}
EXTENSION = EXTENSIONS[compiled.NAME]  # the time loops, which most tests switch on and off


@pytest.fixture(autouse=True)
def cached_extension_only(monkeypatch):
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSIONS[name])
