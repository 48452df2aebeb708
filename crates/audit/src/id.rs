//! Fixed-size IDs written as hex digits.

use serde::{Serialize, Serializer};

/// An ID of `N` lower-case hex digits, kept inline (no allocation per request): a request ID
/// ([`RequestId`]), a W3C trace ID (32) or span ID (16).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    /// The last `N` hex digits of `n`, zero-padded.
    pub fn of(n: u128) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bytes = n.to_be_bytes();
        let mut out = [b'0'; N];
        // Two digits per byte, from the low end: `N` is even and at most 32.
        for (pair, byte) in out.rchunks_exact_mut(2).zip(bytes.iter().rev()) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        HexId(out)
    }

    /// `text` if it is exactly `N` lower-case hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; N] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(HexId(bytes))
    }

    /// The digits, as ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::ops::Deref for HexId<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Debug for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> Serialize for HexId<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A request's ID: a UUIDv7 (time-ordered) as 32 hex digits, without dashes.
pub type RequestId = HexId<32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_the_formatters_padded_lower_case() {
        let mut n: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for _ in 0..200 {
            assert_eq!(HexId::<32>::of(n).as_str(), format!("{n:032x}"));
            let low = u128::from(n as u64);
            assert_eq!(HexId::<16>::of(low).as_str(), format!("{low:016x}"));
            // Only the low digits, as the span ID takes them from a u64.
            assert_eq!(HexId::<16>::of(n).as_str(), format!("{low:016x}"));
            assert_eq!(
                HexId::<32>::of(n >> 100).as_str(),
                format!("{:032x}", n >> 100)
            );
            assert_eq!(HexId::<32>::parse(&format!("{n:032x}")), Some(HexId::of(n)));
            n = n.wrapping_mul(0x2545_f491_4f6c_dd1d).rotate_left(17) ^ 0x9e37;
        }
    }
}
