//! Integration test of examples/embed-text (a real handler with a real model).
