"""A small play-like text for tests, so that no test needs the bundled corpus's size."""

import random

WORDS = "the king queen my lord good sir thou art a fool and I am not what you think of me now".split()


def write_play(path, speeches: int = 120, seed: int = 0):
    """About 12 kB of speakers and lines from a fixed vocabulary; returns the path."""
    rng = random.Random(seed)
    parts = []
    for _ in range(speeches):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(1, 3))]
        parts.append(rng.choice(["ROMEO", "JULIET", "NURSE"]) + ":\n" + "\n".join(lines) + "\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
