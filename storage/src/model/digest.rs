//! The migration's model digest: a set hash over a model's records that is updated per change
//! instead of recomputed. `H = Σ sha256(be u32 len(key) ‖ key ‖ value) mod 2^256` over the
//! model's (key, value) pairs; adding or removing one pair adds or subtracts its hash, so a
//! controller that knows the digest of a model at one log index and every change since knows
//! the digest now, without reading the model. The order of the pairs does not matter, which is
//! what lets a copy read page by page and changes replayed on another controller arrive at the
//! same value as the source's own bookkeeping.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A model digest: a 256-bit number, kept as four little-endian 64-bit limbs.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ModelDigest([u64; 4]);

impl ModelDigest {
    /// The digest of no pairs.
    pub const EMPTY: ModelDigest = ModelDigest([0; 4]);

    /// The hash of one pair, as a digest of a set holding only it.
    pub fn of_pair(key: &[u8], value: &[u8]) -> ModelDigest {
        let mut hasher = Sha256::new();
        let len = u32::try_from(key.len()).expect("a key is shorter than 4 GiB");
        hasher.update(len.to_be_bytes());
        hasher.update(key);
        hasher.update(value);
        ModelDigest::from_bytes(&hasher.finalize().into())
    }

    /// The digest of a set of pairs.
    pub fn of_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> ModelDigest {
        let mut digest = ModelDigest::EMPTY;
        for (key, value) in pairs {
            digest.add_pair(key, value);
        }
        digest
    }

    /// Adds pair `(key, value)` to the set.
    pub fn add_pair(&mut self, key: &[u8], value: &[u8]) {
        *self = self.plus(ModelDigest::of_pair(key, value));
    }

    /// Removes pair `(key, value)` from the set.
    pub fn remove_pair(&mut self, key: &[u8], value: &[u8]) {
        *self = self.minus(ModelDigest::of_pair(key, value));
    }

    /// `key` changes from `old` to `new` (`None`: absent).
    pub fn change(&mut self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        if let Some(old) = old {
            self.remove_pair(key, old);
        }
        if let Some(new) = new {
            self.add_pair(key, new);
        }
    }

    /// `self + other` mod 2^256.
    pub fn plus(self, other: ModelDigest) -> ModelDigest {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, limb) in out.iter_mut().enumerate() {
            let (sum, c1) = self.0[i].overflowing_add(other.0[i]);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
        ModelDigest(out)
    }

    /// `self - other` mod 2^256.
    pub fn minus(self, other: ModelDigest) -> ModelDigest {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, limb) in out.iter_mut().enumerate() {
            let (diff, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *limb = diff;
            borrow = b1 || b2;
        }
        ModelDigest(out)
    }

    /// The 32 bytes, big-endian (the hex form reads like a number).
    pub fn to_bytes(self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            bytes[(3 - i) * 8..(4 - i) * 8].copy_from_slice(&limb.to_be_bytes());
        }
        bytes
    }

    /// From 32 big-endian bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> ModelDigest {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let start = (3 - i) * 8;
            *limb = u64::from_be_bytes(bytes[start..start + 8].try_into().expect("8 bytes"));
        }
        ModelDigest(limbs)
    }

    /// Lowercase hex of the 32 bytes (what records and `ctl` show).
    pub fn to_hex(self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parses the hex form (`None` unless exactly 64 hex digits).
    pub fn from_hex(text: &str) -> Option<ModelDigest> {
        let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
        Some(ModelDigest::from_bytes(&bytes))
    }
}

impl fmt::Display for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelDigest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_removal_undoes_addition() {
        let pairs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")];
        let forward = ModelDigest::of_pairs(pairs);
        let backward = ModelDigest::of_pairs(pairs.iter().rev().copied());
        assert_eq!(forward, backward);
        let mut digest = forward;
        digest.remove_pair(b"b", b"2");
        assert_eq!(digest, ModelDigest::of_pairs([pairs[0], pairs[2]]));
        digest.change(b"a", Some(b"1"), Some(b"9"));
        assert_eq!(
            digest,
            ModelDigest::of_pairs([(b"a".as_slice(), b"9".as_slice()), pairs[2]])
        );
        digest.change(b"a", Some(b"9"), None);
        digest.change(b"c", Some(b"3"), None);
        assert_eq!(digest, ModelDigest::EMPTY);
    }

    #[test]
    fn the_key_length_keeps_key_and_value_apart() {
        assert_ne!(
            ModelDigest::of_pair(b"ab", b"c"),
            ModelDigest::of_pair(b"a", b"bc")
        );
    }

    #[test]
    fn arithmetic_wraps_at_2_to_the_256() {
        let max = ModelDigest([u64::MAX; 4]);
        let one = ModelDigest([1, 0, 0, 0]);
        assert_eq!(max.plus(one), ModelDigest::EMPTY);
        assert_eq!(ModelDigest::EMPTY.minus(one), max);
        let carry = ModelDigest([u64::MAX, 0, 0, 0]).plus(one);
        assert_eq!(carry, ModelDigest([0, 1, 0, 0]));
    }

    #[test]
    fn bytes_and_hex_round_trip() {
        let digest = ModelDigest::of_pair(b"m/u/model", b"record");
        assert_eq!(ModelDigest::from_bytes(&digest.to_bytes()), digest);
        assert_eq!(ModelDigest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(ModelDigest::from_hex("zz"), None);
        assert_eq!(ModelDigest::EMPTY.to_hex(), "0".repeat(64));
    }
}
