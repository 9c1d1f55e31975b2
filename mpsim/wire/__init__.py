"""Byte-exact wire formats: bytes to frozen dataclasses and back. No state, no time, no I/O."""
