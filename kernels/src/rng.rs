//! A counter-based random number generator (Philox4x32-10, Salmon et al.
//! 2011), the same family cuRAND and JAX use.
//!
//! This is the generator of `adjoint_graph::rng`, bit for bit (the worker's
//! tests compare the two): kernels draw the same numbers as the reference
//! interpreter without this crate knowing about graphs.
//!
//! A draw is a pure function of (seed, step, rank, site key, element): no
//! state advances, so a recomputed op, a resumed job or another backend
//! draws exactly the same numbers.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: encrypts `counter` under `key`.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The key of one random site: which job (seed), which step, which rank,
/// which op (site key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub seed: u64,
    pub step: u64,
    pub rank: u32,
    pub site: u64,
}

impl Stream {
    /// 32 random bits for element `element`.
    pub fn bits(&self, element: u64) -> u32 {
        let site = self.site ^ (u64::from(self.rank) << 48);
        let counter = [
            element as u32,
            (element >> 32) as u32,
            site as u32 ^ (self.step as u32),
            (site >> 32) as u32 ^ ((self.step >> 32) as u32).rotate_left(16),
        ];
        let key = [
            self.seed as u32 ^ (self.step as u32).rotate_left(7),
            (self.seed >> 32) as u32,
        ];
        philox4x32(counter, key)[0]
    }

    /// A uniform draw in [0, 1) with 24 random bits, exact in f32 and f64.
    pub fn uniform(&self, element: u64) -> f64 {
        f64::from(self.bits(element) >> 8) * (1.0 / 16_777_216.0)
    }

    /// A standard normal draw (Box-Muller over two sub-streams).
    pub fn normal(&self, element: u64) -> f64 {
        let u1 = (f64::from(self.bits(2 * element)) + 1.0) / 4_294_967_297.0;
        let u2 = f64::from(self.bits(2 * element + 1)) / 4_294_967_296.0;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A stable 64-bit key for a name (FNV-1a), for RNG sites and initializers.
pub fn key_of(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_reference_vector() {
        // Known-answer test from the Random123 distribution (kat_vectors):
        // philox4x32_10 with counter and key all ones-bits.
        let out = philox4x32([u32::MAX; 4], [u32::MAX; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox4x32([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn draws_depend_on_every_key_part_and_repeat_exactly() {
        let s = Stream {
            seed: 1,
            step: 2,
            rank: 0,
            site: 3,
        };
        assert_eq!(s.bits(5), s.bits(5));
        assert_ne!(s.bits(5), s.bits(6));
        assert_ne!(s.bits(5), Stream { seed: 9, ..s }.bits(5));
        assert_ne!(s.bits(5), Stream { step: 9, ..s }.bits(5));
        assert_ne!(s.bits(5), Stream { rank: 1, ..s }.bits(5));
        assert_ne!(s.bits(5), Stream { site: 9, ..s }.bits(5));
        let mean: f64 = (0..10_000).map(|i| s.uniform(i)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let var: f64 = (0..10_000).map(|i| s.normal(i).powi(2)).sum::<f64>() / 10_000.0;
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
