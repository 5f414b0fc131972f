//! SipHash (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012), written
//! once for the kernel and for userspace, and fed one byte or one word at a time so a
//! bounded kernel loop can drive it.
//!
//! The name maps key host names by a hash ([`crate::names`]). An unkeyed hash (FNV, as
//! before) lets whoever controls a domain the host looks up pick a name that hashes like
//! a listed one; SipHash under a random 128-bit key ([`HashKey`], drawn per boot by the
//! agent) is a pseudo-random function: without the key, a name that collides with a
//! listed one is found only by chance, 2^-64 per try, and the hash is never shown to the
//! sender of a name. The datapath runs SipHash-1-3 ([`C_ROUNDS`], [`D_ROUNDS`]: the
//! rounds Rust's `HashMap` uses against the same hash-flooding threat); the code takes
//! the rounds as parameters so the unit tests check it against the paper's SipHash-2-4
//! vectors.

/// Compression rounds per 8-byte word in the datapath.
pub const C_ROUNDS: usize = 1;
/// Finalization rounds in the datapath.
pub const D_ROUNDS: usize = 3;

/// The 128-bit key, as two little-endian words (`k0` the first 8 key bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HashKey {
    /// Key bytes 0..8, little-endian.
    pub k0: u64,
    /// Key bytes 8..16, little-endian.
    pub k1: u64,
}

impl HashKey {
    /// The key from its 16 bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            k0[i] = b[i];
            k1[i] = b[8 + i];
            i += 1;
        }
        Self {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// Whether this is the zero key: what a key map never written holds.
    pub const fn is_unset(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

/// SipHash's state between words.
#[derive(Clone, Copy, Debug)]
pub struct Sip<const C: usize, const D: usize> {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

/// The datapath's SipHash.
pub type Sip13 = Sip<C_ROUNDS, D_ROUNDS>;

impl<const C: usize, const D: usize> Sip<C, D> {
    /// The state under `key`, before any word.
    #[inline(always)]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            v0: key.k0 ^ 0x736f_6d65_7073_6575,
            v1: key.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: key.k0 ^ 0x6c79_6765_6e65_7261,
            v3: key.k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs one whole 8-byte word (message bytes in little-endian order).
    #[inline(always)]
    pub fn word(&mut self, m: u64) {
        self.v3 ^= m;
        let mut i = 0;
        while i < C {
            self.round();
            i += 1;
        }
        self.v0 ^= m;
    }

    /// The hash of a message of `len` bytes whose whole words went through
    /// [`Sip::word`] and whose last `len % 8` bytes are `tail` (little-endian, the
    /// bytes above them zero).
    #[inline(always)]
    pub fn finish(mut self, tail: u64, len: usize) -> u64 {
        self.word(((len as u64) << 56) | tail);
        self.v2 ^= 0xff;
        let mut i = 0;
        while i < D {
            self.round();
            i += 1;
        }
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-c-d of `msg` under `key` (userspace, tests).
pub fn hash<const C: usize, const D: usize>(key: &HashKey, msg: &[u8]) -> u64 {
    let mut s = Sip::<C, D>::new(key);
    let mut words = msg.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        s.word(u64::from_le_bytes(b));
    }
    let mut tail = 0u64;
    for (i, &b) in words.remainder().iter().enumerate() {
        tail |= (b as u64) << (8 * i);
    }
    s.finish(tail, msg.len())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn paper_key() -> HashKey {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        HashKey::from_bytes(k)
    }

    #[test]
    fn siphash_2_4_gives_the_papers_vectors() {
        // Appendix A of the paper: key 00..0f, message 00..0e.
        let msg: std::vec::Vec<u8> = (0..15).collect();
        assert_eq!(hash::<2, 4>(&paper_key(), &msg), 0xa129_ca61_49be_45e5);
        // The reference implementation's vectors.h (vectors_sip64): message
        // 00..(i-1), output as little-endian bytes; i = 0..=12.
        let vectors: [[u8; 8]; 13] = [
            [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72],
            [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
            [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d],
            [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
            [0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf],
            [0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18],
            [0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb],
            [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab],
            [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93],
            [0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e],
            [0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a],
            [0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4],
            [0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75],
        ];
        for (len, want) in vectors.into_iter().enumerate() {
            let msg: std::vec::Vec<u8> = (0..len as u8).collect();
            assert_eq!(
                hash::<2, 4>(&paper_key(), &msg),
                u64::from_le_bytes(want),
                "{len} bytes"
            );
        }
    }

    #[test]
    #[expect(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4: the reference here"
    )]
    fn siphash_2_4_agrees_with_std_at_every_length() {
        use core::hash::Hasher as _;
        let key = HashKey {
            k0: 0x0706_0504_0302_0100,
            k1: 0x0f0e_0d0c_0b0a_0908,
        };
        let msg: std::vec::Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..=msg.len() {
            let mut std_hasher = core::hash::SipHasher::new_with_keys(key.k0, key.k1);
            std_hasher.write(&msg[..len]);
            assert_eq!(hash::<2, 4>(&key, &msg[..len]), std_hasher.finish());
        }
    }
}
