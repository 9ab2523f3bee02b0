//! BLAKE3 verified streaming, bao style, with chunk groups of 16 KiB.
//!
//! A file of `size` bytes is cut into [`GROUP_SIZE`] groups (the last may be shorter;
//! an empty file has one empty group). Each group's BLAKE3 chaining value is computed
//! on its own (`blake3::hazmat`), and the chaining values of all groups form the
//! *outboard*: 32 bytes per group, 0.2 % of the file. The outboard is authenticated by
//! the file's BLAKE3 hash (the root of the same tree BLAKE3 builds), so once the
//! outboard is checked against the hash, any group - hence any range - is verified on
//! its own by hashing it and comparing with its outboard entry.
//!
//! Groups of 2^4 BLAKE3 chunks fall on subtree boundaries of the BLAKE3 tree (every
//! left subtree of an input larger than one group is a power of two of chunks, at least
//! 16), so the root computed from group chaining values equals `blake3::hash(file)`.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes in a chunk group: 16 BLAKE3 chunks.
pub const GROUP_SIZE: u64 = 16 * 1024;
/// Bytes of outboard per group.
pub const CV_LEN: usize = 32;

/// Number of groups of a file of `size` bytes (one for an empty file).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_SIZE).max(1)
}

/// Length of group `index` of a file of `size` bytes.
pub fn group_len(size: u64, index: u64) -> usize {
    let start = index * GROUP_SIZE;
    (size.saturating_sub(start)).min(GROUP_SIZE) as usize
}

/// Length of the outboard of a file of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    group_count(size) * CV_LEN as u64
}

/// The outboard entry of group `index` whose bytes are `data`, in a file of `groups`
/// groups. For a one-group file that is the root hash itself.
pub fn group_cv(data: &[u8], index: u64, groups: u64) -> ChainingValue {
    if groups == 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * GROUP_SIZE);
    h.update(data);
    h.finalize_non_root()
}

/// Computes the root hash from the group chaining values, fed in order, in memory
/// bounded by the tree depth (at most 64 values).
#[derive(Clone)]
pub struct RootBuilder {
    groups: u64,
    pushed: u64,
    stack: Vec<ChainingValue>,
}

impl RootBuilder {
    /// A builder for a file of `groups` groups.
    pub fn new(groups: u64) -> RootBuilder {
        RootBuilder {
            groups,
            pushed: 0,
            stack: Vec::with_capacity(64),
        }
    }

    /// Adds the next group's chaining value.
    pub fn push(&mut self, cv: &ChainingValue) {
        // Lazy merging, as BLAKE3 does: merge completed subtrees only when more input
        // follows, so the last merges can be done as root.
        while self.stack.len() as u32 > self.pushed.count_ones() {
            let right = self.stack.pop().unwrap();
            let left = self.stack.pop().unwrap();
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
        self.stack.push(*cv);
        self.pushed += 1;
    }

    /// The root hash so far: `None` until every group is pushed.
    pub fn root(&self) -> Option<[u8; 32]> {
        self.clone().finish()
    }

    /// The root hash, or `None` when the number of values pushed is not `groups`.
    pub fn finish(mut self) -> Option<[u8; 32]> {
        if self.pushed != self.groups {
            return None;
        }
        if self.groups == 1 {
            return self.stack.pop();
        }
        while self.stack.len() > 2 {
            let right = self.stack.pop().unwrap();
            let left = self.stack.pop().unwrap();
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
        let right = self.stack.pop()?;
        let left = self.stack.pop()?;
        Some(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
    }
}

/// Hashes a whole file given as a reader: returns the outboard and the root hash.
pub fn outboard_of(mut r: impl std::io::Read, size: u64) -> std::io::Result<(Vec<u8>, [u8; 32])> {
    let groups = group_count(size);
    let mut out = Vec::with_capacity(outboard_len(size) as usize);
    let mut rb = RootBuilder::new(groups);
    let mut buf = vec![0u8; GROUP_SIZE as usize * 64];
    let mut index = 0u64;
    while index < groups {
        let batch_end = (index + 64).min(groups);
        let want = ((batch_end * GROUP_SIZE).min(size) - index * GROUP_SIZE) as usize;
        r.read_exact(&mut buf[..want])?;
        for (i, g) in (index..batch_end).enumerate() {
            let len = group_len(size, g);
            let off = i * GROUP_SIZE as usize;
            let cv = group_cv(&buf[off..off + len], g, groups);
            out.extend_from_slice(&cv);
            rb.push(&cv);
        }
        index = batch_end;
    }
    let root = rb.finish().expect("pushed every group");
    Ok((out, root))
}

/// Checks an outboard against a root hash.
pub fn outboard_matches(outboard: &[u8], size: u64, root: &[u8; 32]) -> bool {
    let groups = group_count(size);
    if outboard.len() as u64 != groups * CV_LEN as u64 {
        return false;
    }
    let mut rb = RootBuilder::new(groups);
    for cv in outboard.chunks_exact(CV_LEN) {
        rb.push(cv.try_into().unwrap());
    }
    rb.finish().as_ref() == Some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn root_equals_blake3_for_many_sizes() {
        let g = GROUP_SIZE as usize;
        for n in [
            0,
            1,
            1023,
            1024,
            1025,
            g - 1,
            g,
            g + 1,
            2 * g,
            3 * g + 7,
            5 * g,
            8 * g,
            9 * g - 1,
            17 * g + 5,
        ] {
            let d = data(n);
            let (ob, root) = outboard_of(&d[..], n as u64).unwrap();
            assert_eq!(&root, blake3::hash(&d).as_bytes(), "size {n}");
            assert!(outboard_matches(&ob, n as u64, &root));
            assert_eq!(ob.len() as u64, outboard_len(n as u64));
        }
    }

    #[test]
    fn a_changed_byte_fails_its_group_only() {
        let n = 5 * GROUP_SIZE as usize + 100;
        let mut d = data(n);
        let (ob, root) = outboard_of(&d[..], n as u64).unwrap();
        d[2 * GROUP_SIZE as usize + 9] ^= 1;
        let groups = group_count(n as u64);
        for gi in 0..groups {
            let s = (gi * GROUP_SIZE) as usize;
            let e = s + group_len(n as u64, gi);
            let ok = group_cv(&d[s..e], gi, groups)[..] == ob[gi as usize * 32..][..32];
            assert_eq!(ok, gi != 2);
        }
        let mut bad = ob.clone();
        bad[40] ^= 1;
        assert!(!outboard_matches(&bad, n as u64, &root));
    }
}
