//! Runs `src/tokenizer.rs`'s unit tests natively, without the SDK (the crate itself is a wasm
//! component): `rustc --edition 2024 --test -o /tmp/tok-test tools/tokenizer_test.rs && /tmp/tok-test`

/// The sorted vocabulary that build.rs generates for the component, built at run time here.
mod vocab {
    pub static VOCAB: std::sync::LazyLock<Vec<(&'static str, u32)>> = std::sync::LazyLock::new(|| {
        let mut v: Vec<(&str, u32)> = include_str!("../vocab.txt")
            .lines()
            .enumerate()
            .map(|(id, t)| (t, id as u32))
            .collect();
        v.sort_unstable();
        v
    });
}

#[path = "../src/tokenizer.rs"]
mod tokenizer;
#[path = "../src/unicode_tables.rs"]
#[rustfmt::skip]
mod unicode_tables;
