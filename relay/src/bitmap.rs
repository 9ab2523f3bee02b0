//! Which groups of a file are present: one bit per 16 KiB group.

/// A fixed-size set of group indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u64>,
    len: u64,
    count: u64,
}

impl Bitmap {
    /// An empty set over `len` groups.
    pub fn new(len: u64) -> Bitmap {
        Bitmap { bits: vec![0; len.div_ceil(64) as usize], len, count: 0 }
    }

    /// Restores a set saved with [`Bitmap::to_bytes`]; `None` if the bytes do not fit.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Option<Bitmap> {
        let words = len.div_ceil(64) as usize;
        if bytes.len() != words * 8 {
            return None;
        }
        let bits: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let mut b = Bitmap { bits, len, count: 0 };
        // Bits past the end must be clear.
        if !len.is_multiple_of(64) && b.bits[words - 1] >> (len % 64) != 0 {
            return None;
        }
        b.count = b.bits.iter().map(|w| w.count_ones() as u64).sum();
        Some(b)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of groups present.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub fn set(&mut self, i: u64) {
        assert!(i < self.len);
        let w = &mut self.bits[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if *w & m == 0 {
            *w |= m;
            self.count += 1;
        }
    }

    pub fn clear(&mut self, i: u64) {
        assert!(i < self.len);
        let w = &mut self.bits[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        if *w & m != 0 {
            *w &= !m;
            self.count -= 1;
        }
    }

    /// Number of consecutive present groups starting at `i`, at most `max`.
    pub fn run_from(&self, i: u64, max: u64) -> u64 {
        let mut n = 0;
        while n < max && self.get(i + n) {
            n += 1;
        }
        n
    }

    /// Ranges `[start, end)` of missing groups, in order.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.len {
            let w = self.bits[(i / 64) as usize];
            if i % 64 == 0 && w == u64::MAX {
                i += 64;
                continue;
            }
            if !self.get(i) {
                let start = i;
                while i < self.len && !self.get(i) {
                    i += 1;
                }
                out.push((start, i));
            } else {
                i += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_and_round_trip() {
        let mut b = Bitmap::new(130);
        assert_eq!(b.missing(), vec![(0, 130)]);
        for i in 0..64 {
            b.set(i);
        }
        b.set(100);
        assert_eq!(b.missing(), vec![(64, 100), (101, 130)]);
        assert_eq!(b.count(), 65);
        let r = Bitmap::from_bytes(130, &b.to_bytes()).unwrap();
        assert_eq!(r, b);
        assert!(Bitmap::from_bytes(129, &b.to_bytes()).is_some());
        assert!(Bitmap::from_bytes(500, &b.to_bytes()).is_none());
        assert_eq!(b.run_from(60, 10), 4);
    }
}
