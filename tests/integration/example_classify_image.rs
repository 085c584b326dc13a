//! Integration test of examples/classify-image (a real handler with a real model).
