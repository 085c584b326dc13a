//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a request may
//! bring, the one a guest is handed, and the ids of new traces and spans.
//!
//! Ids come from a per-thread SplitMix64 generator seeded once from the OS: a span id is needed on
//! the request path of every traced request, and a system call per id would cost more than the
//! rest of the bookkeeping. Trace ids only have to be unique, not secret.

use std::cell::Cell;

/// 16 bytes; all zeroes is invalid.
pub type TraceId = [u8; 16];
/// 8 bytes; all zeroes is invalid.
pub type SpanId = [u8; 8];

/// The `sampled` bit of the trace flags: the caller records this trace.
pub const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the caller's trace, its span (our parent) and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the span that handles the request.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// `00-` + 32 hex + `-` + 16 hex + `-` + 2 hex.
const LEN: usize = 55;

impl TraceParent {
    /// Parses a version-00 `traceparent`. Anything else, including an unknown version, upper-case
    /// hex (the format is lower-case only) or an all-zero id, is `None`: the request then starts
    /// a trace of its own, as the specification says a receiver must.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        if value.len() != LEN
            || !value.starts_with(b"00-")
            || value[35] != b'-'
            || value[52] != b'-'
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flags = [0u8; 1];
        decode_hex(&value[3..35], &mut trace_id)?;
        decode_hex(&value[36..52], &mut parent_id)?;
        decode_hex(&value[53..55], &mut flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// The header value: `00-{trace}-{parent}-{flags}`.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(LEN);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.parent_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// Whether the caller records this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// Lower-case hex into `out` (exactly twice its length); `None` on any other character.
fn decode_hex(src: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if src.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

/// Appends `bytes` as lower-case hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A seed from the OS; if it has none to give, the clock and the thread's identity, which still
/// differ between threads and runs.
fn seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        std::thread::current().id().hash(&mut h);
        std::time::SystemTime::now().hash(&mut h);
        h.finish()
    })
}

/// The next value of this thread's SplitMix64 sequence.
fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new, non-zero trace id.
pub fn new_trace_id() -> TraceId {
    loop {
        let (hi, lo) = (next_u64(), next_u64());
        if hi | lo != 0 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&hi.to_be_bytes());
            id[8..].copy_from_slice(&lo.to_be_bytes());
            return id;
        }
    }
}

/// A new, non-zero span id.
pub fn new_span_id() -> SpanId {
    loop {
        let v = next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(p.trace_id[0], 0x0a);
        assert_eq!(p.trace_id[15], 0x9c);
        assert_eq!(
            p.parent_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert!(p.sampled());
        assert_eq!(p.header(), EXAMPLE);
        // Surrounding blanks are not part of the value.
        assert_eq!(
            TraceParent::parse(format!(" {EXAMPLE} ").as_bytes()),
            Some(p)
        );
        assert_eq!(
            TraceParent::parse(&EXAMPLE.as_bytes()[..53]),
            None,
            "cut short"
        );
        let mut flags00 = EXAMPLE.to_string();
        flags00.replace_range(53.., "00");
        assert!(!TraceParent::parse(flags00.as_bytes()).unwrap().sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad = [
            "",
            "garbage",
            // Unknown version, and the reserved ff.
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // All-zero trace id or parent id.
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // Upper case, non-hex, wrong separators, wrong lengths, trailing fields.
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-0101",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn new_ids_are_non_zero_and_differ() {
        let traces: std::collections::HashSet<_> = (0..1000).map(|_| new_trace_id()).collect();
        assert_eq!(traces.len(), 1000);
        assert!(!traces.contains(&[0; 16]));
        let spans: std::collections::HashSet<_> = (0..1000).map(|_| new_span_id()).collect();
        assert_eq!(spans.len(), 1000);
        // Another thread has a sequence of its own.
        let other = std::thread::spawn(new_span_id).join().unwrap();
        assert!(!spans.contains(&other));
    }
}
