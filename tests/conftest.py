"""Shared by every test file: the C++ loops (rnnlab/kernels/loops.cpp) compile in under a minute at
first use; tests never compile them. They use a cached build where one exists, else the Python loops."""

import pytest

from rnnlab.kernels import compiled

EXTENSION = compiled.extension() if compiled.built() else None


@pytest.fixture(autouse=True)
def cached_extension_only(monkeypatch):
    monkeypatch.setattr(compiled, "extension", lambda: EXTENSION)
