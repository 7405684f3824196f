"""Data: loaders, tokenizers and batching, and the small bundled data sets (provenance in
SOURCES.md beside this file)."""

from .batches import Batch, TokenStream
from .text import BUNDLED, read_text, split_blocks
from .vocabulary import LEVELS, UNK, Vocabulary, detokenize, tokenize

__all__ = ["Batch", "TokenStream", "BUNDLED", "LEVELS", "UNK", "Vocabulary", "detokenize", "read_text",
           "split_blocks", "tokenize"]
