//! The state machine digest's hasher: FNV-1a (64-bit) of the `fnv` crate, fed by
//! postcard. FNV-1a is a fixed algorithm, so the digest cannot change with the
//! dependency; the reference vectors below would catch it if it did.

use std::hash::Hasher as _;

use fnv::FnvHasher;

/// A streaming FNV-1a hasher; `Extend<u8>` lets postcard serialize straight into it.
pub(crate) struct Fnv1a(FnvHasher);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Fnv1a(FnvHasher::default())
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl Extend<u8> for Fnv1a {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        for b in bytes {
            self.0.write_u8(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vectors() {
        let hash = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.extend(s.iter().copied());
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
