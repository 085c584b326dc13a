//! Integration test of examples/detect-speech (a real handler with a real model).
