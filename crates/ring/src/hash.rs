//! Stable hashing.
//!
//! Every placement decision in a cluster must come out the same on every node, on every platform and in every
//! release, so nothing here may depend on a process-random seed (as `std`'s `RandomState` does) or on the
//! machine's byte order. All hashing goes through xxh3-64 with one fixed seed, over explicit little-endian
//! encodings, and the test vectors at the bottom of this file pin the outputs: if one of them ever changes, data
//! would silently move between nodes, so the test must never be "fixed" by updating the vectors.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed of every placement hash. Changing it re-homes every key in every cluster: never change it.
pub const SEED: u64 = 0x5241_4d50_4152_5431; // "RAMPART1"

/// Hashes a key (SKU, lock name, kv key) to a point on the 64-bit ring.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, SEED)
}

/// The ring point of virtual node `vnode` of the node called `node_id`.
///
/// The id's bytes are followed by the vnode index as 4 little-endian bytes, so `("n1", 10)` and `("n11", 0)`
/// hash different inputs.
#[inline]
pub fn vnode_point(node_id: &str, vnode: u32) -> u64 {
    let mut buf = [0u8; 128];
    let id = node_id.as_bytes();
    if id.len() + 4 <= buf.len() {
        buf[..id.len()].copy_from_slice(id);
        buf[id.len()..id.len() + 4].copy_from_slice(&vnode.to_le_bytes());
        xxh3_64_with_seed(&buf[..id.len() + 4], SEED)
    } else {
        let mut long = Vec::with_capacity(id.len() + 4);
        long.extend_from_slice(id);
        long.extend_from_slice(&vnode.to_le_bytes());
        xxh3_64_with_seed(&long, SEED)
    }
}

/// Mixes a 64-bit value with a salt into a new, independent-looking 64-bit value.
///
/// Used to derive the ring point of a partition and the successive probes of the jump, Maglev and rendezvous
/// algorithms from one key hash.
#[inline]
pub fn mix(value: u64, salt: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&value.to_le_bytes());
    buf[8..].copy_from_slice(&salt.to_le_bytes());
    xxh3_64_with_seed(&buf, SEED)
}

/// Maps a 64-bit hash uniformly onto `0..n` without a division (Lemire's multiply-shift range reduction).
///
/// Unlike `hash % n` this uses the high bits, which are the best-mixed ones, and it is exact for any `n`.
#[inline]
pub fn reduce(hash: u64, n: u32) -> u32 {
    ((u128::from(hash) * u128::from(n)) >> 64) as u32
}

/// The ring point of partition `p`: where its preference walk around the ring starts.
#[inline]
pub fn partition_point(p: u32) -> u64 {
    mix(u64::from(p), 0x7061_7274) // "part"
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned outputs. These values are part of the on-disk and on-wire contract: a change here moves data.
    #[test]
    fn key_hash_vectors_never_change() {
        // Cross-checked against the reference implementation (Python's `xxhash.xxh3_64_intdigest`, same seed).
        let vectors: [(&[u8], u64); 4] = [
            (b"", 0x3fda_8c78_a584_711e),
            (b"sku-1", 0x5b27_cb1b_68f0_4e9d),
            (b"lock/orders", 0x65f0_361e_1de8_3022),
            (b"the quick brown fox jumps over the lazy dog", 0x4962_e634_54ed_3162),
        ];
        for (input, want) in vectors {
            assert_eq!(key_hash(input), want, "key_hash({:?})", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn vnode_and_partition_vectors_never_change() {
        assert_eq!(vnode_point("n1", 0), 0x4333_fcc3_9c4e_6b89);
        assert_eq!(vnode_point("n1", 159), 0x3b9c_0ebc_2d25_c925);
        assert_eq!(vnode_point(&"x".repeat(200), 7), 0x8908_5f0c_96ae_13f2);
        assert_eq!(partition_point(0), 0x62c1_b0a8_914f_2db9);
        assert_eq!(partition_point(63), 0xa5b3_c02e_f67d_55c2);
        assert_eq!(mix(1, 2), 0x6ba6_49c6_266b_1439);
    }

    #[test]
    fn long_ids_hash_like_short_ones() {
        // The stack-buffer fast path and the heap path must agree on the bytes they hash.
        let id = "y".repeat(124);
        let mut bytes = id.as_bytes().to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(vnode_point(&id, 3), xxh3_64_with_seed(&bytes, SEED));
        let id = "y".repeat(125);
        let mut bytes = id.as_bytes().to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(vnode_point(&id, 3), xxh3_64_with_seed(&bytes, SEED));
    }

    #[test]
    fn reduce_covers_the_range_and_stays_in_it() {
        assert_eq!(reduce(0, 64), 0);
        assert_eq!(reduce(u64::MAX, 64), 63);
        assert_eq!(reduce(u64::MAX, 1), 0);
        assert_eq!(reduce(1 << 63, 2), 1);
    }
}
