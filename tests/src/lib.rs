//! Shared helpers for the end-to-end tests in `tests/tests/`: finding binaries and the Python venv, free ports, waiting for conditions.
