"""Tandem's document model over pycrdt: operations, clocks, sequence numbers, replay. Pure: no I/O."""
