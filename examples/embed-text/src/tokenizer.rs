//! BERT uncased WordPiece tokenisation (what `BertTokenizer(do_lower_case=True)` and the Hugging
//! Face `tokenizers` BERT pipeline do), with no dependencies beyond std and generated tables.
//!
//! 1. Clean: drop NUL, U+FFFD and control/format/private-use characters (keeping tab, LF, CR);
//!    every whitespace character becomes a space.
//! 2. Put spaces around CJK ideographs, so each is its own word.
//! 3. Strip accents: NFD, then drop nonspacing marks (Mn); then lowercase.
//! 4. Split on whitespace, and split punctuation (ASCII punctuation and Unicode P*) into
//!    one-character words.
//! 5. WordPiece each word: greedy longest match from the vocabulary, continuations prefixed `##`;
//!    a word with no match (or over 100 characters) is `[UNK]`.
//! 6. `[CLS]` + tokens + `[SEP]`, truncated to `max_len` tokens in all.

use crate::unicode_tables::{DECOMPOSED, NONSPACING_MARKS, OTHER, PUNCTUATION};

const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary: tokens with their ids, sorted by token (built from `vocab.txt` at
/// compile time by `build.rs`).
pub struct Tokenizer {
    ids: &'static [(&'static str, u32)],
    cls: i64,
    sep: i64,
    unk: i64,
}

impl Tokenizer {
    /// Uses a sorted vocabulary; panics if `[CLS]`, `[SEP]` or `[UNK]` is missing (a build error,
    /// not something a request can cause).
    pub fn new(ids: &'static [(&'static str, u32)]) -> Tokenizer {
        let mut tokenizer = Tokenizer {
            ids,
            cls: 0,
            sep: 0,
            unk: 0,
        };
        let id = |t: &str| {
            tokenizer
                .id(t)
                .unwrap_or_else(|| panic!("vocabulary has no {t}"))
        };
        let (cls, sep, unk) = (id("[CLS]"), id("[SEP]"), id("[UNK]"));
        tokenizer.cls = cls;
        tokenizer.sep = sep;
        tokenizer.unk = unk;
        tokenizer
    }

    fn id(&self, token: &str) -> Option<i64> {
        let i = self.ids.binary_search_by(|(t, _)| (*t).cmp(token)).ok()?;
        Some(i64::from(self.ids[i].1))
    }

    /// The token ids of `text`: `[CLS] ... [SEP]`, at most `max_len` (at least 2) ids.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i64> {
        let mut out = vec![self.cls];
        for word in words(&normalize(text)) {
            self.wordpiece(&word, &mut out);
        }
        out.truncate(max_len.max(2) - 1);
        out.push(self.sep);
        out
    }

    fn wordpiece(&self, word: &str, out: &mut Vec<i64>) {
        if word.chars().count() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let start_len = out.len();
        let mut start = 0;
        let mut piece = String::new();
        while start < word.len() {
            // Longest vocabulary entry starting at `start`, shrinking one character at a time.
            let mut end = word.len();
            let mut found = None;
            while end > start {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&word[start..end]);
                if let Some(id) = self.id(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end = word[..end]
                    .char_indices()
                    .next_back()
                    .map_or(start, |(i, _)| i);
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(start_len);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }
}

/// Steps 1 to 3: cleaned, CJK-spaced, accent-stripped, lowercased text.
pub fn normalize(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            spaced.push(' ');
        } else if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let mut stripped = String::with_capacity(spaced.len());
    for c in spaced.chars() {
        strip_accents(c, &mut stripped);
    }
    stripped.to_lowercase()
}

/// Step 4: whitespace-separated words, with each punctuation character a word of its own.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in text.split(is_whitespace).filter(|w| !w.is_empty()) {
        let mut current = String::new();
        for c in chunk.chars() {
            if is_punctuation(c) {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                out.push(c.to_string());
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// NFD of `c` without its nonspacing marks, appended to `out`.
fn strip_accents(c: char, out: &mut String) {
    let cp = c as u32;
    if in_ranges(cp, NONSPACING_MARKS) {
        return;
    }
    // Hangul syllables decompose into their jamo (Unicode's arithmetic decomposition).
    if (0xAC00..=0xD7A3).contains(&cp) {
        let s = cp - 0xAC00;
        let (l, v, t) = (0x1100 + s / 588, 0x1161 + (s % 588) / 28, 0x11A7 + s % 28);
        out.extend([l, v].into_iter().filter_map(char::from_u32));
        if t != 0x11A7 {
            out.extend(char::from_u32(t));
        }
        return;
    }
    match DECOMPOSED.binary_search_by_key(&cp, |&(k, _)| k) {
        Ok(i) => out.push_str(DECOMPOSED[i].1),
        Err(_) => out.push(c),
    }
}

fn in_ranges(cp: u32, ranges: &[(u32, u32)]) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(c as u32, OTHER)
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || in_ranges(c as u32, PUNCTUATION)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        let by_id: Vec<&str> = include_str!("../vocab.txt").lines().collect();
        Tokenizer::new(&crate::vocab::VOCAB)
            .encode(text, 128)
            .into_iter()
            .map(|id| by_id[id as usize].to_string())
            .collect()
    }

    #[test]
    fn normalizes_like_bert_uncased() {
        assert_eq!(normalize("Héllo\tWORLD\u{0}\u{200B}!"), "hello world!");
        assert_eq!(normalize("Crème Brûlée"), "creme brulee");
        assert_eq!(normalize("e\u{301}"), "e");
        assert_eq!(normalize("中文"), " 中  文 ");
        assert_eq!(words("hello, world!"), ["hello", ",", "world", "!"]);
    }

    #[test]
    fn wordpiece_matches_bert() {
        assert_eq!(
            tokens("Tensorlet runs WebAssembly."),
            [
                "[CLS]", "tensor", "##let", "runs", "web", "##asse", "##mb", "##ly", ".", "[SEP]"
            ]
        );
        assert_eq!(tokens(""), ["[CLS]", "[SEP]"]);
        assert_eq!(tokens("\u{1F600}"), ["[CLS]", "[UNK]", "[SEP]"]);
        assert_eq!(tokens(&"a ".repeat(500)).len(), 128);
    }
}
