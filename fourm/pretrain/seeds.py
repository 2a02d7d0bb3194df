"""Seeds of a pretraining run: one independent 63-bit seed per (run seed, step, micro-step, stream)."""


def step_seed(seed: int, step: int, micro: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, step, micro-step, stream): independent streams, stable across resumes."""
    x = (seed * 1_000_003 + step) * 1_009 + micro
    x = (x * 97 + stream) & 0x7FFF_FFFF_FFFF_FFFF
    # splitmix64 finaliser: nearby inputs give unrelated seeds
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFF_FFFF_FFFF_FFFF
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFF_FFFF_FFFF_FFFF
    return (x ^ (x >> 31)) & 0x7FFF_FFFF_FFFF_FFFF
