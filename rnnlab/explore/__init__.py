"""`rnnlab explore`: one offline HTML page that shows what a trained run's state holds.

    trace.py     the model run step by step over a passage: states, gates, next-token probabilities
    page.py      what the page embeds (passage, statistics, float16 weights, config) and the HTML

The page is `template.html` (package data: plain HTML, CSS and JS) with the data embedded as JSON;
it needs no network. For the language task's character models the page also holds the weights and
runs the cell itself (a second implementation of every ladder cell, tested against PyTorch in a
browser by tests/test_explore.py).
"""

from .page import DEFAULT_PASSAGE, ExplorePage, build_page, page_data, read_page_data
from .trace import FEATURES, Trace, correlated_units, feature_values, saturation, trace_language

__all__ = ["DEFAULT_PASSAGE", "ExplorePage", "build_page", "page_data", "read_page_data", "FEATURES", "Trace",
           "correlated_units", "feature_values", "saturation", "trace_language"]
