"""Data: loaders, tokenizers and batching, and the small bundled data sets (provenance in
SOURCES.md beside this file)."""
