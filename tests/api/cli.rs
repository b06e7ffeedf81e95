//! Command-line tests (placeholder; owned elsewhere).
