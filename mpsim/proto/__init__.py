"""Sans-I/O negotiation state machines. Time comes in as ``now``, randomness as ``rng``."""
