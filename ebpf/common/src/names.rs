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
//! **Hash.** A name is a list of labels; each label is hashed alone (FNV-1a 64 over its
//! length byte and its ASCII-lowercased bytes), and a suffix's hash folds the label
//! hashes from the root down ([`fold`]). So the hash of every suffix of a name falls
//! out of one backward pass over its label hashes: that is what the wildcard lookup
//! needs. A 64-bit hash can collide; a collision could only make a listed pattern
//! match an unlisted name that a trusted resolver answered for.

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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// ASCII lowercase; DNS names compare case-insensitively (RFC 4343).
#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// Starts a label hash with the label's length.
#[inline(always)]
pub const fn label_start(len: u8) -> u64 {
    (FNV_OFFSET ^ len as u64).wrapping_mul(FNV_PRIME)
}

/// Adds one byte of a label to its hash.
#[inline(always)]
pub const fn label_byte(hash: u64, b: u8) -> u64 {
    (hash ^ lower(b) as u64).wrapping_mul(FNV_PRIME)
}

/// The hash of one label.
pub fn label_hash(label: &[u8]) -> u64 {
    let mut h = label_start(label.len() as u8);
    for &b in label {
        h = label_byte(h, b);
    }
    h
}

/// The hash of the suffix made of `label` followed by the suffix hashed `rest`
/// (`FNV_OFFSET` for the root).
#[inline(always)]
pub const fn fold(label: u64, rest: u64) -> u64 {
    let mut h = rest;
    let mut i = 0;
    while i < 8 {
        h = (h ^ ((label >> (i * 8)) & 0xff)).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

/// The hash of the root (the empty suffix).
pub const ROOT: u64 = FNV_OFFSET;

/// The hash of a dotted name (no trailing dot), e.g. `repo.clearswift.net`.
pub fn name_hash(dotted: &str) -> u64 {
    dotted
        .rsplit('.')
        .fold(ROOT, |rest, label| fold(label_hash(label.as_bytes()), rest))
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameValue {
    /// Bit `i` set: the pattern belongs to name group `i` of the generation.
    pub groups: u64,
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

/// The patterns a name (its label hashes, first label first) can match, one per
/// [`PatternWalk::next`]: `*.` of each proper suffix with at least one label, from the
/// shortest suffix to the longest, then the name itself exactly. The suffix hashes fold
/// from the root down, one label per step, so no array of them is needed, and the
/// kernel can take one step per round of a bounded loop.
#[derive(Clone, Copy, Debug)]
pub struct PatternWalk {
    suffix: u64,
    left: u8,
}

impl PatternWalk {
    /// A walk over a name of `count` labels (none for 0 or more than [`MAX_LABELS`]).
    #[inline(always)]
    pub const fn new(count: usize) -> Self {
        Self {
            suffix: ROOT,
            left: if count <= MAX_LABELS { count as u8 } else { 0 },
        }
    }

    /// The next pattern's key in `generation`, or None after the exact name.
    #[inline(always)]
    pub fn next(&mut self, labels: &[u64; MAX_LABELS], generation: u32) -> Option<NameKey> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.left as usize;
        self.suffix = fold(labels[i & (MAX_LABELS - 1)], self.suffix);
        let kind = if i == 0 { KIND_EXACT } else { KIND_WILDCARD };
        Some(NameKey::new(self.suffix, generation, kind))
    }
}

/// Calls `f` with the key of each pattern a name can match ([`PatternWalk`]) until it
/// returns true; returns whether one did.
pub fn for_each_pattern(
    labels: &[u64; MAX_LABELS],
    count: usize,
    generation: u32,
    mut f: impl FnMut(NameKey) -> bool,
) -> bool {
    let mut walk = PatternWalk::new(count);
    while let Some(key) = walk.next(labels, generation) {
        if f(key) {
            return true;
        }
    }
    false
}

/// Records `key` in `learned`, valid until `expires_ns`, if the policy lists that
/// pattern; returns whether it does.
#[inline(always)]
pub fn record_pattern<T: NameTables>(
    tables: &T,
    key: &NameKey,
    expires_ns: u64,
    learned: &mut Learned,
) -> bool {
    if tables.name_groups(key) == 0 {
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

/// Records in `learned` every pattern of the policy's `generation` that the name
/// (label hashes as [`PatternWalk`] takes them) matches, valid until `expires_ns`;
/// returns whether the name is listed at all. This is what learning an address from an
/// answer to that name stores (the kernel takes the same steps, one per loop
/// round).
pub fn record_listed<T: NameTables>(
    tables: &T,
    labels: &[u64; MAX_LABELS],
    count: usize,
    generation: u32,
    expires_ns: u64,
    learned: &mut Learned,
) -> bool {
    let mut listed = false;
    for_each_pattern(labels, count, generation, |key| {
        listed |= record_pattern(tables, &key, expires_ns, learned);
        false
    });
    listed
}

/// The label hashes of a dotted name, for [`for_each_pattern`]; None for more than
/// [`MAX_LABELS`] labels.
pub fn dotted_labels(dotted: &str) -> Option<([u64; MAX_LABELS], usize)> {
    let mut labels = [0u64; MAX_LABELS];
    let mut count = 0;
    for label in dotted.split('.') {
        *labels.get_mut(count)? = label_hash(label.as_bytes());
        count += 1;
    }
    Some((labels, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_case_insensitive_and_suffixes_fold() {
        assert_eq!(
            name_hash("Repo.ClearSwift.NET"),
            name_hash("repo.clearswift.net")
        );
        assert_ne!(
            name_hash("repo.clearswift.net"),
            name_hash("clearswift.net")
        );
        // a.b != ab. (labels are delimited)
        assert_ne!(name_hash("a.b"), name_hash("ab"));
        let (labels, n) = dotted_labels("x.y.mailshell.net").unwrap();
        let mut seen = [0u64; 4];
        let mut i = 0;
        for_each_pattern(&labels, n, 0, |k| {
            seen[i] = k.hash;
            i += 1;
            false
        });
        assert_eq!(i, 4);
        assert_eq!(seen[0], name_hash("net"));
        assert_eq!(seen[1], name_hash("mailshell.net"));
        assert_eq!(seen[2], name_hash("y.mailshell.net"));
        assert_eq!(seen[3], name_hash("x.y.mailshell.net"));
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
