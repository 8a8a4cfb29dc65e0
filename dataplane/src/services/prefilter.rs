//! A set of IPv4 addresses that answers "maybe" or "certainly not" in a couple of
//! instructions: one bit per hash bucket, 2 KiB, never a false "no". The Service
//! prefilter uses it so traffic that is no Service's skips `lb` (a false "maybe" only
//! costs that packet the `lb` lookup it paid before).

const BITS: u32 = 14;
const WORDS: usize = (1 << BITS) / 64;

#[derive(Clone)]
pub struct AddrFilter {
    words: Box<[u64; WORDS]>,
    /// Addresses inserted (a filter that saw none answers "no" without hashing).
    len: u64,
}

impl Default for AddrFilter {
    fn default() -> Self {
        AddrFilter {
            words: Box::new([0; WORDS]),
            len: 0,
        }
    }
}

impl std::fmt::Debug for AddrFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AddrFilter({} inserted)", self.len)
    }
}

#[inline(always)]
fn slot(ip: u32) -> (usize, u64) {
    // Fibonacci hashing: consecutive pod addresses spread over the buckets.
    let h = ip.wrapping_mul(0x9E37_79B1) >> (32 - BITS);
    ((h / 64) as usize, 1u64 << (h % 64))
}

impl AddrFilter {
    pub fn insert(&mut self, ip: u32) {
        let (w, b) = slot(ip);
        self.words[w] |= b;
        self.len += 1;
    }

    /// False only when `ip` was never inserted.
    #[inline(always)]
    pub fn may_contain(&self, ip: u32) -> bool {
        if self.len == 0 {
            return false;
        }
        let (w, b) = slot(ip);
        self.words[w] & b != 0
    }

    pub fn clear(&mut self) {
        *self.words = [0; WORDS];
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_a_false_no_and_mostly_a_true_no() {
        let mut f = AddrFilter::default();
        assert!(!f.may_contain(0x0a00_0001));
        let base = 0x0af4_0000u32; // 10.244.0.0
        for i in 0..200 {
            f.insert(base + i);
        }
        for i in 0..200 {
            assert!(f.may_contain(base + i));
        }
        // 200 of 16 384 bits set: other pods mostly answer "no".
        let false_yes = (1000..11_000).filter(|&i| f.may_contain(base + i)).count();
        assert!(false_yes < 400, "{false_yes} false positives in 10 000");
        f.clear();
        assert!(!f.may_contain(base));
    }
}
