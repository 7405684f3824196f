"""`rnnlab explore`: one offline HTML page that shows what a trained run's state holds.

    trace.py     a stack of cells run step by step: states, gates; statistics (correlations, saturation)
    examples.py  a few held-out examples of the tasks other than language, as the cells read them
    page.py      what the page embeds (passage, statistics, float16 weights, config) and the HTML

The page is `template.html` (package data: plain HTML, CSS and JS) with the data embedded as JSON;
it needs no network. For character-level language runs the page also holds the weights and runs
the cell itself (a second implementation of every ladder cell the language task trains, tested
against PyTorch in a real browser by tests/test_explore.py).
"""

from .examples import Example, held_out_examples
from .page import DEFAULT_PASSAGE, ExplorePage, build_page, examples_page_data, page_data, read_page_data
from .trace import FEATURES, Trace, correlated_units, feature_values, saturation, trace_core, trace_language

__all__ = ["DEFAULT_PASSAGE", "ExplorePage", "build_page", "page_data", "examples_page_data", "read_page_data",
           "Example", "held_out_examples", "FEATURES", "Trace", "correlated_units", "feature_values", "saturation",
           "trace_core", "trace_language"]
