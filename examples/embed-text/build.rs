//! Turns `vocab.txt` into a static table sorted by token, so a fresh instance looks tokens up by
//! binary search instead of building a 30,522-entry hash map on every request.

use std::fmt::Write;

fn main() {
    println!("cargo::rerun-if-changed=vocab.txt");
    let vocab = std::fs::read_to_string("vocab.txt").expect("read vocab.txt");
    let mut entries: Vec<(&str, usize)> =
        vocab.lines().enumerate().map(|(id, t)| (t, id)).collect();
    entries.sort_unstable();
    let mut out = String::from("/// Vocabulary tokens with their ids, sorted by token.\n");
    writeln!(
        out,
        "pub static VOCAB: [(&str, u32); {}] = [",
        entries.len()
    )
    .unwrap();
    for (token, id) in entries {
        writeln!(out, "    ({token:?}, {id}),").unwrap();
    }
    out.push_str("];\n");
    let path = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("vocab.rs");
    std::fs::write(path, out).expect("write vocab.rs");
}
