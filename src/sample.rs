//! Stable sampling: a share of bundles (or rows) chosen by a hash of their key, the same on every
//! worker and every release, so a redelivered bundle is chosen again or not at all. The
//! prediction log samples by it, shadow scoring chooses its bundles by it, and `retrain` its
//! held-out rows.

/// A number in [0, 1) from a stable hash of `key` (FNV-1a, 64 bits): the same on every worker
/// and every release.
pub fn unit_hash(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The top 53 bits, as a fraction.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `key` is among the `fraction` (0 to 1) of keys chosen.
pub fn keeps(key: &str, fraction: f64) -> bool {
    unit_hash(key) < fraction
}
