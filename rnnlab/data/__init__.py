"""Data: loaders, tokenizers, batching, and seeded generators of synthetic tasks (`synthetic`)."""
