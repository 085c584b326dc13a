//! Runs `src/tokenizer.rs`'s unit tests natively, without the SDK (the crate itself is a wasm
//! component): `rustc --edition 2024 --test -o /tmp/tok-test tools/tokenizer_test.rs && /tmp/tok-test`

#[path = "../src/tokenizer.rs"]
mod tokenizer;
#[path = "../src/unicode_tables.rs"]
#[rustfmt::skip]
mod unicode_tables;
