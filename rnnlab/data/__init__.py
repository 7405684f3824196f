"""Data: loaders, tokenizers and batching, and the small bundled data sets (provenance in
SOURCES.md beside this file)."""

from .batches import Batch, TokenStream
from .text import BUNDLED, LEVELS, UNK, Vocabulary, detokenize, read_text, split_blocks, tokenize

__all__ = ["Batch", "TokenStream", "BUNDLED", "LEVELS", "UNK", "Vocabulary", "detokenize", "read_text",
           "split_blocks", "tokenize"]
