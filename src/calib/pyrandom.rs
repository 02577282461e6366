//! Bit-exact port of the parts of CPython 3's `random` module that the
//! official Wanda / SparseGPT calibration code uses.
//!
//! The reference implementation (`lib/data.py` of locuslab/wanda) picks its
//! calibration documents and window offsets with `random.seed(seed)` followed by
//! `random.randint(...)`. Reproducing its calibration set — and therefore its
//! pruning masks and perplexities — requires the same Mersenne Twister state,
//! the same integer seeding and the same rejection sampling as CPython, so that
//! equal seeds give equal windows. This module replicates `_randommodule.c`
//! (`init_by_array`, `genrand_uint32`, `getrandbits`, `random`) and
//! `random.py` (`_randbelow_with_getrandbits`, `randrange`/`randint`).

/// Mersenne Twister state size in 32-bit words.
const N: usize = 624;
/// MT19937 middle-word offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython-compatible MT19937 generator (`random.Random`).
#[derive(Clone, Debug)]
pub struct PyRandom {
    mt: [u32; N],
    /// Next word of `mt` to temper; `N` means a twist is due.
    index: usize,
}

impl PyRandom {
    /// Equivalent to `random.seed(seed)` with a Python `int`.
    ///
    /// CPython feeds `abs(seed)` to `init_by_array` as its 32-bit words, least
    /// significant first, using only as many words as the value needs (at least
    /// one, so seed 0 gives the key `[0]`).
    pub fn new(seed: u64) -> Self {
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        let mut rng = Self { mt: [0; N], index: N };
        if high == 0 {
            rng.init_by_array(&[low]);
        } else {
            rng.init_by_array(&[low, high]);
        }
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.mt;
        let mut i = 1;
        let mut j = 0;
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        // MSB is 1, assuring a non-zero initial array.
        mt[0] = 0x8000_0000;
    }

    /// Regenerates all `N` words. Indices wrap modulo `N`, which reads the
    /// already-updated words exactly like the reference three-loop version.
    fn twist(&mut self) {
        for kk in 0..N {
            let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn genrand_uint32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// CPython `getrandbits` for `k <= 128`: 32-bit words fill the result least
    /// significant first and the last (most significant) word keeps only its
    /// top bits. `k == 0` returns 0 without consuming state (CPython >= 3.9).
    fn getrandbits_wide(&mut self, k: u32) -> u128 {
        debug_assert!(k <= 128);
        let mut out = 0u128;
        let mut shift = 0;
        let mut remaining = k;
        while remaining > 0 {
            let mut word = self.genrand_uint32();
            if remaining < 32 {
                word >>= 32 - remaining;
            }
            out |= u128::from(word) << shift;
            shift += 32;
            remaining = remaining.saturating_sub(32);
        }
        out
    }

    /// `random.getrandbits(k)`: a uniform integer in `[0, 2**k)`.
    ///
    /// # Panics
    /// If `k > 64` (the result would not fit the return type).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits: k = {k} exceeds 64 bits");
        self.getrandbits_wide(k) as u64
    }

    /// `Random._randbelow_with_getrandbits(n)` for `n <= 2**64` (needed by
    /// the full-width `randint`, whose range has 2**64 values).
    fn randbelow_wide(&mut self, n: u128) -> u128 {
        assert!(n > 0, "randbelow: empty range");
        let k = 128 - n.leading_zeros();
        let mut r = self.getrandbits_wide(k);
        while r >= n {
            r = self.getrandbits_wide(k);
        }
        r
    }

    /// `Random._randbelow(n)`: uniform in `[0, n)` by rejection sampling on
    /// `n.bit_length()` random bits, exactly as CPython does.
    ///
    /// # Panics
    /// If `n == 0` (CPython would loop forever or raise on an empty range).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        self.randbelow_wide(u128::from(n)) as u64
    }

    /// `random.randint(a, b)`: uniform in `[a, b]`, i.e.
    /// `a + _randbelow(b - a + 1)`.
    ///
    /// # Panics
    /// If `a > b` (CPython raises `ValueError` for the empty range).
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        assert!(a <= b, "randint: empty range [{a}, {b}]");
        let width = (i128::from(b) - i128::from(a) + 1) as u128;
        // The offset is below `width`, so `a + offset` lies in `[a, b]`.
        (i128::from(a) + self.randbelow_wide(width) as i128) as i64
    }

    /// `random.random()`: a float in `[0, 1)` built from 53 random bits
    /// (27 from one word, 26 from the next), like CPython's `random_random`.
    pub fn random(&mut self) -> f64 {
        let a = self.genrand_uint32() >> 5;
        let b = self.genrand_uint32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    //! Expected values come from CPython 3.11.7:
    //! ```text
    //! python3 -c '
    //! import random
    //! for seed in [0, 1, 42, 2**40 + 7]:
    //!     random.seed(seed); print([repr(random.random()) for _ in range(5)])
    //!     random.seed(seed); print([random.getrandbits(32) for _ in range(5)])
    //!     random.seed(seed); print([random.getrandbits(64) for _ in range(5)])
    //!     random.seed(seed); print([random.randint(0, 1379) for _ in range(8)])
    //!     random.seed(seed); print([random.randint(0, 10**6) for _ in range(8)])
    //!     random.seed(seed)
    //!     print([random.getrandbits(7), random.randint(0, 1379), random.getrandbits(33),
    //!            random.getrandbits(64), random.randint(-5, 5), random.getrandbits(1),
    //!            random.randint(0, 10**6), random.getrandbits(0),
    //!            random.randint(-2**63, 2**63 - 1), random.randint(7, 7),
    //!            random.getrandbits(50)], repr(random.random()))'
    //! ```
    use super::PyRandom;

    struct Expected {
        seed: u64,
        random: [f64; 5],
        bits32: [u64; 5],
        bits64: [u64; 5],
        randint_1379: [i64; 8],
        randint_1e6: [i64; 8],
        /// Results of the mixed call sequence in `check_mixed`.
        mixed: [i128; 11],
        mixed_then_random: f64,
    }

    const CASES: [Expected; 4] = [
        Expected {
            seed: 0,
            random: [
                0.8444218515250481,
                0.7579544029403025,
                0.420571580830845,
                0.25891675029296335,
                0.5112747213686085,
            ],
            bits32: [3626764237, 1654615998, 3255389356, 3823568514, 1806341205],
            bits64: [
                7106521602475165645,
                16422101724900707500,
                746805015404516437,
                17809683713383489082,
                8963783824838420066,
            ],
            randint_1379: [788, 861, 82, 530, 1047, 995, 829, 621],
            randint_1e6: [885440, 403958, 794772, 933488, 441001, 42450, 271493, 536110],
            mixed: [
                108,
                788,
                7550356652,
                746805015404516437,
                -1,
                1,
                536110,
                0,
                6084712057446794809,
                7,
                656830886387631,
            ],
            mixed_then_random: 0.8916606598206824,
        },
        Expected {
            seed: 1,
            random: [
                0.13436424411240122,
                0.8474337369372327,
                0.763774618976614,
                0.2550690257394217,
                0.49543508709194095,
            ],
            bits32: [577090037, 2444712010, 3639700191, 3445702192, 3280387012],
            bits64: [
                10499958131665514997,
                14799178230035213023,
                1164115433906158532,
                2175216119781798972,
                14037279428536751483,
            ],
            randint_1379: [275, 1165, 129, 522, 241, 1014, 920, 967],
            randint_1e6: [140891, 596853, 888598, 841235, 800875, 66172, 267459, 123646],
            mixed: [
                17,
                1165,
                7934667487,
                1164115433906158532,
                -1,
                0,
                519501,
                0,
                -931725450029404348,
                7,
                236389797578262,
            ],
            mixed_then_random: 0.0938595867742349,
        },
        Expected {
            seed: 42,
            random: [
                0.6394267984578837,
                0.025010755222666936,
                0.27502931836911926,
                0.22321073814882275,
                0.7364712141640124,
            ],
            bits32: [2746317213, 478163327, 107420369, 3184935163, 1181241943],
            bits64: [
                2053695854357871005,
                13679192365072849617,
                4517457392071889495,
                2574020394472462046,
                1890702223848595625,
            ],
            randint_1379: [1309, 228, 51, 563, 501, 457, 285, 209],
            randint_1e6: [670487, 116739, 26225, 777572, 288389, 256787, 234053, 146316],
            mixed: [
                81,
                228,
                4402387665,
                4517457392071889495,
                -2,
                0,
                772246,
                0,
                836864915349561680,
                7,
                33548126054643,
            ],
            mixed_then_random: 0.09369523986159245,
        },
        Expected {
            // 2**40 + 7: a two-word seeding key.
            seed: 1_099_511_627_783,
            random: [
                0.6137037779936511,
                0.8149162973309487,
                0.9450115087592873,
                0.5703906991004561,
                0.47592409887048936,
            ],
            bits32: [2635837658, 3209733218, 3500038837, 4028389051, 4058793509],
            bits64: [
                13785699202830676186,
                17301799233109514933,
                11797128929593804325,
                13015927955237707764,
                4627263377227786602,
            ],
            randint_1379: [1256, 1309, 1168, 974, 513, 1260, 259, 1058],
            randint_1e6: [643515, 783626, 854501, 983493, 990916, 670589, 598097, 739869],
            mixed: [
                78,
                1309,
                6744776692,
                4627263377227786602,
                4,
                0,
                541919,
                0,
                -1970488795791381879,
                7,
                1009930908245912,
            ],
            mixed_then_random: 0.3723434003100796,
        },
    ];

    #[test]
    fn random_matches_cpython() {
        for case in &CASES {
            let mut rng = PyRandom::new(case.seed);
            let got: Vec<f64> = (0..5).map(|_| rng.random()).collect();
            assert_eq!(got, case.random, "seed {}", case.seed);
        }
    }

    #[test]
    fn getrandbits_matches_cpython() {
        for case in &CASES {
            let mut rng = PyRandom::new(case.seed);
            let got: Vec<u64> = (0..5).map(|_| rng.getrandbits(32)).collect();
            assert_eq!(got, case.bits32, "seed {}", case.seed);
            let mut rng = PyRandom::new(case.seed);
            let got: Vec<u64> = (0..5).map(|_| rng.getrandbits(64)).collect();
            assert_eq!(got, case.bits64, "seed {}", case.seed);
        }
    }

    #[test]
    fn randint_matches_cpython() {
        for case in &CASES {
            let mut rng = PyRandom::new(case.seed);
            let got: Vec<i64> = (0..8).map(|_| rng.randint(0, 1379)).collect();
            assert_eq!(got, case.randint_1379, "seed {}", case.seed);
            let mut rng = PyRandom::new(case.seed);
            let got: Vec<i64> = (0..8).map(|_| rng.randint(0, 1_000_000)).collect();
            assert_eq!(got, case.randint_1e6, "seed {}", case.seed);
        }
    }

    #[test]
    fn mixed_sequence_matches_cpython() {
        for case in &CASES {
            let mut rng = PyRandom::new(case.seed);
            let got: [i128; 11] = [
                rng.getrandbits(7).into(),
                rng.randint(0, 1379).into(),
                rng.getrandbits(33).into(),
                rng.getrandbits(64).into(),
                rng.randint(-5, 5).into(),
                rng.getrandbits(1).into(),
                rng.randint(0, 1_000_000).into(),
                rng.getrandbits(0).into(),
                rng.randint(i64::MIN, i64::MAX).into(),
                rng.randint(7, 7).into(),
                rng.getrandbits(50).into(),
            ];
            assert_eq!(got, case.mixed, "seed {}", case.seed);
            assert_eq!(rng.random(), case.mixed_then_random, "seed {}", case.seed);
        }
    }

    #[test]
    fn randbelow_agrees_with_randint() {
        let mut a = PyRandom::new(3);
        let mut b = PyRandom::new(3);
        for n in [1i64, 2, 3, 1380, 1 << 40, i64::MAX] {
            assert_eq!(a.randbelow(n as u64), b.randint(0, n - 1) as u64);
        }
    }
}
