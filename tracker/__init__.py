"""solana-snapshot-tracker: finds the newest Solana snapshots of a fleet and serves them."""

__version__ = "0.1.0"
