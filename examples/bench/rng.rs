//! A deterministic PRNG shared by the benchmark and the fleet simulation (no rand crate).

/// SplitMix64: tiny, fast and good enough for test data; fixed seeds keep runs comparable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform fraction in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Incompressible bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }

    /// Text that deflates about 3:1, like source code, logs or JSON.
    pub fn text(&mut self, len: usize, out: &mut Vec<u8>) {
        const WORDS: [&str; 32] = [
            "update",
            "slot",
            "channel",
            "release",
            "verify",
            "manifest",
            "signature",
            "rollout",
            "device",
            "install",
            "confirm",
            "rollback",
            "the",
            "a",
            "of",
            "and",
            "to",
            "in",
            "is",
            "for",
            "with",
            "fn",
            "let",
            "return",
            "struct",
            "impl",
            "error",
            "result",
            "config",
            "server",
            "blob",
            "sha256",
        ];
        out.clear();
        while out.len() < len {
            let mut bits = self.next();
            for _ in 0..10 {
                out.extend_from_slice(WORDS[(bits & 31) as usize].as_bytes());
                out.push(if bits & 0x3e0 == 0 { b'\n' } else { b' ' });
                bits >>= 6;
            }
        }
        out.truncate(len);
    }
}
