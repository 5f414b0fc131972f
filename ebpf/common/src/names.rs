//! Peer groups by host name: how a name is hashed, the keys and values of the name
//! maps, and the one function that turns an address learned from DNS into the rule
//! that opens a port for it.
//!
//! Three maps carry names (the kernel side fills the last one from DNS answers):
//! - `NAMES` ([`NameKey`] -> [`NameValue`]): each name or wildcard of the policy, per
//!   generation, with the name groups (bits) it belongs to.
//! - `SLOT_NAMES` ([`SlotKey`] -> [`SlotNames`]): for a peer-restricted port slot (the
//!   `peer_set` of a `PORTS` value), which name groups open it and by which rule.
//! - `LEARNED` ([`LearnedKey`] -> [`Learned`]): an address a trusted resolver gave for
//!   a listed name, with the name pattern(s) it was learned through and until when.
//!
//! `LEARNED` stores name patterns (hash and kind), not group bits, so a reload that
//! renumbers or removes groups takes effect at once: the pattern is looked up in the
//! live generation's `NAMES` at decision time.
//!
//! **Hash.** A name is a list of labels; each label is hashed alone (SipHash-1-3 of its
//! ASCII-lowercased bytes), and a suffix's hash folds the label hashes from the root
//! down ([`fold`], SipHash-1-3 of two words). So the hash of every suffix of a name
//! falls out of one backward pass over its label hashes: that is what the wildcard
//! lookup needs. Every hash is keyed by a random 128-bit [`HashKey`] the agent draws
//! when it creates the maps (once per boot: the maps stay pinned across restarts), so a
//! sender cannot pick a name that hashes like a listed one (see [`crate::siphash`]).
//!
//! **Whole-name compare.** A hash only finds a pattern: each `NAMES` value keeps the
//! pattern's name in wire form, and a question's name (or suffix) matches it only when
//! its bytes are those bytes ([`same_name`]). A collision, whatever its odds, teaches
//! nothing.

pub use crate::siphash::HashKey;
use crate::siphash::Sip13;

/// Most labels of a name the datapath considers. Longer names (legal DNS allows 127)
/// are never learned: real host names have far fewer.
pub const MAX_LABELS: usize = 32;
/// Name patterns one learned address remembers (a CDN address can serve several names).
pub const LEARNED_NAMES: usize = 4;
/// Addresses one name pattern (an exact name or a wildcard) may hold in `LEARNED` at a
/// time. Beyond it a new address for the pattern is not learned (counted
/// `stats::dns::OVER_LIMIT`) until older ones expire, so one name that answers with
/// ever new addresses (a pool, a wildcard an attacker's domain falls under) cannot
/// push every other name's addresses out of the LRU: 64 such names would be needed.
pub const LEARNED_PER_NAME: u32 = 1024;
/// Name groups (peer groups with names) in one policy generation: bits of a `u64`.
pub const MAX_NAME_GROUPS: usize = 64;
/// Longest TTL honoured, in seconds (one day), so that a bogus TTL cannot keep an
/// address allowed for years.
pub const MAX_TTL: u32 = 86_400;

/// A [`NameKey`] for one exact name.
pub const KIND_EXACT: u8 = 0;
/// A [`NameKey`] for `*.suffix`: every name strictly below the suffix, at any depth.
pub const KIND_WILDCARD: u8 = 1;

/// Longest name in wire form (RFC 1035 2.3.4), root label included: the room a
/// [`NameValue`] keeps for its pattern's name.
pub const NAME_BUF: usize = 256;

/// ASCII lowercase; DNS names compare case-insensitively (RFC 4343).
#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// One label's hash being computed, a byte at a time (the kernel's parser reads a
/// label byte by byte): SipHash-1-3 under the per-boot key of the label's
/// ASCII-lowercased bytes (the length is in SipHash's last word).
#[derive(Clone, Copy, Debug)]
pub struct LabelHasher {
    sip: Sip13,
    tail: u64,
    len: usize,
}

impl LabelHasher {
    /// A label's hash under `key`, before its first byte.
    #[inline(always)]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            sip: Sip13::new(key),
            tail: 0,
            len: 0,
        }
    }

    /// Adds the label's next byte.
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.tail |= (lower(b) as u64) << ((self.len & 7) * 8);
        self.len += 1;
        if self.len & 7 == 0 {
            self.sip.word(self.tail);
            self.tail = 0;
        }
    }

    /// The label's hash.
    #[inline(always)]
    pub fn finish(self) -> u64 {
        self.sip.finish(self.tail, self.len)
    }
}

/// The hash of one label under `key`.
pub fn label_hash(key: &HashKey, label: &[u8]) -> u64 {
    let mut h = LabelHasher::new(key);
    for &b in label {
        h.byte(b);
    }
    h.finish()
}

/// The hash of the suffix made of `label` (its label hash) followed by the suffix hashed
/// `rest` ([`ROOT`] for the root): SipHash-1-3 under `key` of the two words.
#[inline(always)]
pub fn fold(key: &HashKey, label: u64, rest: u64) -> u64 {
    let mut s = Sip13::new(key);
    s.word(label);
    s.word(rest);
    s.finish(0, 16)
}

/// The hash of the root (the empty suffix).
pub const ROOT: u64 = 0;

/// The hash under `key` of a dotted name (no trailing dot), e.g. `repo.clearswift.net`.
pub fn name_hash(key: &HashKey, dotted: &str) -> u64 {
    dotted.rsplit('.').fold(ROOT, |rest, label| {
        fold(key, label_hash(key, label.as_bytes()), rest)
    })
}

/// Whether the `len` bytes of `buf` that end at `end` are the wire-form name `name`
/// (letter case aside). The bytes are those of a suffix made of whole labels (the
/// caller counts them out label by label), so equal bytes are equal labels.
///
/// The loop's only exit is its bound (no return at the first difference): every exit
/// then leaves the same state for the kernel's verifier to go on from, so it walks the
/// rest once, not once per byte; and letters are lowered without a branch.
#[inline(always)]
pub fn same_name<const N: usize>(name: &NameValue, buf: &[u8; N], end: usize, len: usize) -> bool {
    if name.name_len as usize != len || len == 0 || len > NAME_BUF || len > end || end > N {
        return false;
    }
    let start = end - len;
    let mut diff = 0u8;
    let mut i = 0usize;
    while i < NAME_BUF {
        if i >= len {
            break;
        }
        diff |= lower_arith(buf[(start + i) & (N - 1)]) ^ name.name[i];
        i += 1;
    }
    diff == 0
}

/// [`lower`] without a branch (eBPF has no conditional move: a comparison is a jump).
#[inline(always)]
const fn lower_arith(b: u8) -> u8 {
    let x = b as u32;
    // 1 when x >= 'A', 1 when x <= 'Z'.
    let from_a = ((x + 0x100 - b'A' as u32) >> 8) & 1;
    let to_z = ((b'Z' as u32 + 0x100 - x) >> 8) & 1;
    (x | ((from_a & to_z) << 5)) as u8
}

/// Key of `NAMES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    /// The name's hash ([`name_hash`]; for a wildcard, the hash of the suffix after `*.`).
    pub hash: u64,
    /// Policy generation (0 or 1).
    pub generation: u32,
    /// [`KIND_EXACT`] or [`KIND_WILDCARD`].
    pub kind: u8,
    /// Zero.
    pub _pad: [u8; 3],
}

impl NameKey {
    /// The key of a pattern in `generation`.
    #[inline(always)]
    pub const fn new(hash: u64, generation: u32, kind: u8) -> Self {
        Self {
            hash,
            generation: generation & 1,
            kind,
            _pad: [0; 3],
        }
    }
}

/// Value of `NAMES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameValue {
    /// Bit `i` set: the pattern belongs to name group `i` of the generation.
    pub groups: u64,
    /// Bytes of [`NameValue::name`] in use (the root label included).
    pub name_len: u16,
    /// Zero.
    pub _pad: [u8; 6],
    /// The pattern's name (for a wildcard, the suffix after `*.`) in wire form,
    /// lowercase: what a question's name must be, byte for byte, to match it.
    pub name: [u8; NAME_BUF],
}

impl Default for NameValue {
    fn default() -> Self {
        Self {
            groups: 0,
            name_len: 0,
            _pad: [0; 6],
            name: [0; NAME_BUF],
        }
    }
}

impl NameValue {
    /// The value of a pattern whose name (the suffix after `*.` for a wildcard) is the
    /// dotted `name`, in no group yet; None when it does not fit in wire form.
    pub fn for_name(dotted: &str) -> Option<Self> {
        let mut v = Self::default();
        let mut at = 0usize;
        for label in dotted.split('.') {
            let b = label.as_bytes();
            if b.is_empty() || b.len() > 63 || at + 1 + b.len() + 1 > NAME_BUF {
                return None;
            }
            v.name[at] = b.len() as u8;
            for (i, &c) in b.iter().enumerate() {
                v.name[at + 1 + i] = lower(c);
            }
            at += 1 + b.len();
        }
        v.name_len = (at + 1) as u16;
        Some(v)
    }
}

/// Key of `SLOT_NAMES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// Policy generation (0 or 1).
    pub generation: u32,
    /// The `peer_set` of a `PORTS` value.
    pub slot: u16,
    /// Zero.
    pub _pad: u16,
}

impl SlotKey {
    /// The key of `slot` in `generation`.
    #[inline(always)]
    pub const fn new(generation: u32, slot: u16) -> Self {
        Self {
            generation: generation & 1,
            slot,
            _pad: 0,
        }
    }
}

/// Value of `SLOT_NAMES`: the name groups that open a slot's port, and by which rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotNames {
    /// Bit `i` set: name group `i` opens the port.
    pub mask: u64,
    /// For each set bit `i`, the rule index (the first in policy order) that opens it.
    pub rules: [u16; MAX_NAME_GROUPS],
}

impl Default for SlotNames {
    fn default() -> Self {
        Self {
            mask: 0,
            rules: [0; MAX_NAME_GROUPS],
        }
    }
}

impl SlotNames {
    /// The rule for an address in the name groups `groups` (0: none). The lowest group
    /// bit wins: which of two rules counts an address in both is a counter matter only.
    #[inline(always)]
    pub fn rule(&self, groups: u64) -> u16 {
        let hit = groups & self.mask;
        if hit == 0 {
            return 0;
        }
        // Through `black_box`: eBPF has no count-trailing-zeros instruction, LLVM reads
        // a table instead and, knowing its bytes are below 64, drops the mask, which
        // the verifier needs to see the index bounded.
        let bit = core::hint::black_box(hit.trailing_zeros() as usize);
        self.rules[bit & (MAX_NAME_GROUPS - 1)]
    }
}

/// Key of `LEARNED`: the address, IPv6 or IPv4-mapped, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// The address.
    pub addr: [u8; 16],
}

/// One name pattern an address was learned through.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedName {
    /// The pattern's hash (as in [`NameKey::hash`]); 0 = unused slot.
    pub hash: u64,
    /// `bpf_ktime_get_boot_ns` after which new flows are no longer allowed: TTL plus
    /// `dns_grace` after the answer.
    pub expires_ns: u64,
    /// [`KIND_EXACT`] or [`KIND_WILDCARD`].
    pub kind: u8,
    /// Zero.
    pub _pad: [u8; 7],
}

/// Value of `LEARNED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Up to [`LEARNED_NAMES`] patterns; a new one replaces the slot expiring first.
    pub names: [LearnedName; LEARNED_NAMES],
}

impl Learned {
    /// Records `name` (or extends its expiry when already there). A new pattern takes
    /// a free slot, else the slot expiring first; returns whether the pattern it
    /// replaced was still valid at `now_ns` (an eviction, counted by the datapath).
    #[inline(always)]
    pub fn record(&mut self, name: LearnedName, now_ns: u64) -> bool {
        let mut slot = 0;
        let mut i = 0;
        while i < LEARNED_NAMES {
            let n = &self.names[i];
            if n.hash == name.hash && n.kind == name.kind {
                slot = i;
                break;
            }
            if n.expires_ns < self.names[slot].expires_ns {
                slot = i;
            }
            i += 1;
        }
        let old = self.names[slot & (LEARNED_NAMES - 1)];
        let same = old.hash == name.hash && old.kind == name.kind;
        if !same || name.expires_ns > old.expires_ns {
            self.names[slot & (LEARNED_NAMES - 1)] = name;
        }
        !same && old.hash != 0 && old.expires_ns > now_ns
    }

    /// Records every pattern of `template` (an answer's patterns, see
    /// [`record_listed`]) as valid until `expires_ns`; returns how many still valid
    /// patterns were pushed out (see [`Learned::record`]).
    #[inline(always)]
    pub fn merge(&mut self, template: &Learned, expires_ns: u64, now_ns: u64) -> u32 {
        let mut evicted = 0;
        let mut i = 0;
        while i < LEARNED_NAMES {
            let t = &template.names[i];
            if t.hash != 0 {
                let name = LearnedName {
                    hash: t.hash,
                    expires_ns,
                    kind: t.kind,
                    _pad: [0; 7],
                };
                evicted += self.record(name, now_ns) as u32;
            }
            i += 1;
        }
        evicted
    }

    /// Whether no pattern is valid at `now_ns` any more: what the agent's sweep removes.
    pub fn expired(&self, now_ns: u64) -> bool {
        self.names
            .iter()
            .all(|n| n.hash == 0 || n.expires_ns <= now_ns)
    }
}

/// Read access to the name maps: the kernel's, or the agent's image of them.
pub trait NameTables {
    /// The groups of a `NAMES` entry (0 when absent).
    fn name_groups(&self, key: &NameKey) -> u64;
    /// A `NAMES` entry, if any (by reference: it is 272 bytes).
    fn name_value(&self, key: &NameKey) -> Option<&NameValue>;
    /// The `SLOT_NAMES` entry of a slot, if any (by reference: it is 136 bytes, too
    /// many to copy onto a kernel program's stack).
    fn slot_names(&self, key: &SlotKey) -> Option<&SlotNames>;
}

/// The rule that opens `slot` of `generation` to an address learned as `learned`, at
/// time `now_ns` (0 when none). Patterns past their expiry count for nothing.
#[inline(always)]
pub fn learned_rule<T: NameTables>(
    tables: &T,
    generation: u32,
    slot: u16,
    learned: &Learned,
    now_ns: u64,
) -> u16 {
    let Some(slot_names) = tables.slot_names(&SlotKey::new(generation, slot)) else {
        return 0;
    };
    let mut groups = 0u64;
    let mut i = 0;
    while i < LEARNED_NAMES {
        let n = &learned.names[i];
        if n.hash != 0 && n.expires_ns > now_ns {
            groups |= tables.name_groups(&NameKey::new(n.hash, generation, n.kind));
        }
        i += 1;
    }
    slot_names.rule(groups)
}

/// The patterns a name (its label hashes and lengths, first label first) can match, one
/// per [`PatternWalk::next`]: `*.` of each proper suffix with at least one label, from
/// the shortest suffix to the longest, then the name itself exactly. The suffix hashes
/// fold from the root down, one label per step, so no array of them is needed, and the
/// kernel can take one step per round of a bounded loop. The walk also counts the
/// suffix's bytes in wire form ([`PatternWalk::bytes`]), for the whole-name compare.
#[derive(Clone, Copy, Debug)]
pub struct PatternWalk {
    key: HashKey,
    suffix: u64,
    bytes: u16,
    left: u8,
}

impl PatternWalk {
    /// A walk over a name of `count` labels (none for 0 or more than [`MAX_LABELS`]),
    /// hashed under `key`.
    #[inline(always)]
    pub const fn new(count: usize, key: &HashKey) -> Self {
        Self {
            key: *key,
            suffix: ROOT,
            bytes: 1,
            left: if count <= MAX_LABELS { count as u8 } else { 0 },
        }
    }

    /// The next pattern's key in `generation`, or None after the exact name.
    #[inline(always)]
    pub fn next(
        &mut self,
        labels: &[u64; MAX_LABELS],
        lens: &[u8; MAX_LABELS],
        generation: u32,
    ) -> Option<NameKey> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.left as usize;
        self.suffix = fold(&self.key, labels[i & (MAX_LABELS - 1)], self.suffix);
        self.bytes += 1 + lens[i & (MAX_LABELS - 1)] as u16;
        let kind = if i == 0 { KIND_EXACT } else { KIND_WILDCARD };
        Some(NameKey::new(self.suffix, generation, kind))
    }

    /// Bytes in wire form (root label included) of the suffix [`PatternWalk::next`]
    /// returned last.
    #[inline(always)]
    pub const fn bytes(&self) -> usize {
        self.bytes as usize
    }
}

/// A name as the datapath sees it: label hashes and lengths, first label first, and its
/// wire form. Userspace (the agent's `explain`, tests).
#[derive(Clone, Copy, Debug)]
pub struct WireName {
    /// Label hashes.
    pub labels: [u64; MAX_LABELS],
    /// Label lengths.
    pub lens: [u8; MAX_LABELS],
    /// Labels in use.
    pub count: usize,
    /// The name in wire form, root label included.
    pub wire: [u8; NAME_BUF],
    /// Bytes of `wire` in use.
    pub len: usize,
}

impl WireName {
    /// A dotted name (no trailing dot) hashed under `key`; None for more than
    /// [`MAX_LABELS`] labels, an empty or longer than 63 bytes label, or more than 255
    /// bytes.
    pub fn new(key: &HashKey, dotted: &str) -> Option<Self> {
        let value = NameValue::for_name(dotted)?;
        let mut n = Self {
            labels: [0; MAX_LABELS],
            lens: [0; MAX_LABELS],
            count: 0,
            wire: value.name,
            len: value.name_len as usize,
        };
        for label in dotted.split('.') {
            *n.labels.get_mut(n.count)? = label_hash(key, label.as_bytes());
            n.lens[n.count] = label.len() as u8;
            n.count += 1;
        }
        Some(n)
    }

    /// Calls `f` with the key of each pattern the name can match ([`PatternWalk`]) and
    /// the bytes of its suffix, until it returns true; returns whether one did.
    pub fn for_each_pattern(
        &self,
        key: &HashKey,
        generation: u32,
        mut f: impl FnMut(NameKey, usize) -> bool,
    ) -> bool {
        let mut walk = PatternWalk::new(self.count, key);
        while let Some(k) = walk.next(&self.labels, &self.lens, generation) {
            if f(k, walk.bytes()) {
                return true;
            }
        }
        false
    }
}

/// Records `key` in `learned`, valid until `expires_ns`, if the policy lists that
/// pattern and its name is the `len` bytes of `buf` that end at `end` (the suffix the
/// walk is at, see [`same_name`]); returns whether it does.
#[inline(always)]
pub fn record_pattern<T: NameTables, const N: usize>(
    tables: &T,
    key: &NameKey,
    buf: &[u8; N],
    end: usize,
    len: usize,
    expires_ns: u64,
    learned: &mut Learned,
) -> bool {
    let Some(value) = tables.name_value(key) else {
        return false;
    };
    if value.groups == 0 || !same_name(value, buf, end, len) {
        return false;
    }
    learned.record(
        LearnedName {
            hash: key.hash,
            expires_ns,
            kind: key.kind,
            _pad: [0; 7],
        },
        0,
    );
    true
}

/// Records in `learned` every pattern of the policy's `generation` that `name` matches
/// (hashes and bytes), valid until `expires_ns`; returns whether the name is listed at
/// all. This is what learning an address from an answer to that name stores (the
/// kernel takes the same steps, one per loop round).
pub fn record_listed<T: NameTables>(
    tables: &T,
    key: &HashKey,
    name: &WireName,
    generation: u32,
    expires_ns: u64,
    learned: &mut Learned,
) -> bool {
    let mut listed = false;
    name.for_each_pattern(key, generation, |k, len| {
        listed |= record_pattern(tables, &k, &name.wire, name.len, len, expires_ns, learned);
        false
    });
    listed
}

/// Two DNS labels whose FNV-1a 64 hash (over the length byte, then the bytes: the
/// datapath's label hash before it was keyed) is equal: names that differ only by them
/// hashed alike. Found by a parallel rho search (2^32 hashes); the root test in
/// tests/names.rs shows that one of them is no longer learned as the other.
pub const FNV_COLLISION: [&str; 2] = ["45iqh01vq1jnb", "fjcrg3mea1eic"];

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const KEY: HashKey = HashKey {
        k0: 0x0123_4567_89ab_cdef,
        k1: 0xfedc_ba98_7654_3210,
    };

    #[test]
    fn hash_is_case_insensitive_and_suffixes_fold() {
        let h = |n| name_hash(&KEY, n);
        assert_eq!(h("Repo.ClearSwift.NET"), h("repo.clearswift.net"));
        assert_ne!(h("repo.clearswift.net"), h("clearswift.net"));
        // a.b != ab. (labels are delimited)
        assert_ne!(h("a.b"), h("ab"));
        let other = HashKey { k0: 1, k1: 2 };
        assert_ne!(
            h("repo.clearswift.net"),
            name_hash(&other, "repo.clearswift.net")
        );
        let name = WireName::new(&KEY, "x.y.mailshell.net").unwrap();
        let mut seen = [(0u64, 0usize); 4];
        let mut i = 0;
        name.for_each_pattern(&KEY, 0, |k, len| {
            seen[i] = (k.hash, len);
            i += 1;
            false
        });
        assert_eq!(i, 4);
        assert_eq!(seen[0], (h("net"), 5));
        assert_eq!(seen[1], (h("mailshell.net"), 15));
        assert_eq!(seen[2], (h("y.mailshell.net"), 17));
        assert_eq!(seen[3], (h("x.y.mailshell.net"), 19));
    }

    /// FNV-1a 64 of a label as the datapath hashed it before the key (over the length
    /// byte, then the bytes).
    fn unkeyed_fnv(label: &[u8]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in core::iter::once(&(label.len() as u8)).chain(label) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    #[test]
    fn labels_that_collide_under_unkeyed_fnv_do_not_collide_keyed() {
        let [a, b] = FNV_COLLISION;
        assert_ne!(a, b);
        assert_eq!(unkeyed_fnv(a.as_bytes()), unkeyed_fnv(b.as_bytes()));
        let name = |l: &str| std::format!("{l}.vendor.test");
        assert_ne!(name_hash(&KEY, &name(a)), name_hash(&KEY, &name(b)));
    }

    /// A pattern table with one pattern, for the whole-name compare.
    struct One(NameKey, NameValue);

    impl NameTables for One {
        fn name_groups(&self, key: &NameKey) -> u64 {
            self.name_value(key).map_or(0, |v| v.groups)
        }
        fn name_value(&self, key: &NameKey) -> Option<&NameValue> {
            (*key == self.0).then_some(&self.1)
        }
        fn slot_names(&self, _: &SlotKey) -> Option<&SlotNames> {
            None
        }
    }

    #[test]
    fn a_hash_match_counts_only_when_the_name_is_the_patterns() {
        let pattern = |dotted: &str, kind| {
            let mut v = NameValue::for_name(dotted).unwrap();
            v.groups = 1;
            One(NameKey::new(name_hash(&KEY, dotted), 0, kind), v)
        };
        let listed = |t: &One, dotted: &str| {
            let mut l = Learned::default();
            record_listed(t, &KEY, &WireName::new(&KEY, dotted).unwrap(), 0, 1, &mut l)
        };
        let wild = pattern("vendor.test", KIND_WILDCARD);
        assert!(listed(&wild, "a.b.Vendor.TEST"));
        assert!(
            !listed(&wild, "vendor.test"),
            "a wildcard is strictly below"
        );
        assert!(!listed(&wild, "a.xvendor.test"));
        let exact = pattern("repo.vendor.test", KIND_EXACT);
        assert!(listed(&exact, "REPO.vendor.test"));
        assert!(!listed(&exact, "a.repo.vendor.test"));
        // A hash that matches while the bytes do not (what a collision would be): the
        // table holds the hash of one name with the bytes of another.
        let mut forged = pattern("repo.vendor.test", KIND_EXACT);
        forged.0.hash = name_hash(&KEY, "evil.vendor.test");
        assert!(!listed(&forged, "evil.vendor.test"));
        // The same bytes, but not on a label boundary of the name: the last 13 bytes
        // of `ab\x06vendor.test` in wire form are `vendor.test`'s. With its hash
        // forged too, the walk still compares whole labels (16 bytes), never 13.
        let odd = "ab\x06vendor.test";
        let mut v = pattern("vendor.test", KIND_EXACT);
        v.0.hash = name_hash(&KEY, odd);
        assert!(!listed(&v, odd));
        let w = WireName::new(&KEY, odd).unwrap();
        assert!(
            same_name(&v.1, &w.wire, w.len, 13),
            "the bytes alone would match"
        );
    }

    #[test]
    fn lower_without_a_branch_is_lower() {
        for b in 0..=255u8 {
            assert_eq!(lower_arith(b), lower(b), "{b}");
        }
    }

    #[test]
    fn learned_keeps_the_latest_expiry_and_replaces_the_oldest() {
        let n = |hash, expires_ns| LearnedName {
            hash,
            expires_ns,
            kind: KIND_EXACT,
            _pad: [0; 7],
        };
        let mut l = Learned::default();
        assert!(!l.record(n(1, 10), 0));
        assert!(!l.record(n(1, 5), 0));
        assert_eq!(l.names[0].expires_ns, 10);
        for h in 2..=4 {
            assert!(!l.record(n(h, 20 + h), 0), "free slots first");
        }
        // Pattern 1 expires first; at time 11 it is no longer valid: no eviction.
        assert!(!l.record(n(9, 100), 11));
        assert!(l.names.iter().all(|x| x.hash != 1), "the oldest went");
        assert!(l.names.iter().any(|x| x.hash == 9));
        // Pattern 2 (valid until 22) pushed out at time 12: an eviction.
        assert!(l.record(n(10, 100), 12));
        assert!(!l.expired(23));
        assert!(l.expired(100));
    }

    #[test]
    fn merge_stamps_the_answer_expiry_and_counts_valid_patterns_pushed_out() {
        let n = |hash| LearnedName {
            hash,
            expires_ns: 0,
            kind: KIND_WILDCARD,
            _pad: [0; 7],
        };
        let mut template = Learned::default();
        template.names[0] = n(7);
        template.names[1] = n(8);
        let mut l = Learned::default();
        assert_eq!(l.merge(&template, 50, 10), 0);
        assert!(l.names.iter().filter(|x| x.expires_ns == 50).count() == 2);
        // The same answer later extends both, evicting nothing.
        assert_eq!(l.merge(&template, 90, 60), 0);
        assert!(l.names.iter().filter(|x| x.expires_ns == 90).count() == 2);
        // Three more names fill the rest and push one valid pattern out.
        let mut more = Learned::default();
        for (i, h) in [1, 2, 3].into_iter().enumerate() {
            more.names[i] = n(h);
        }
        assert_eq!(l.merge(&more, 100, 70), 1);
    }
}
