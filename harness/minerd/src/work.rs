//! Proof of work as Bitcoin and Stratum v1 define it: double SHA-256 of an 80-byte block
//! header, share targets from pool difficulty, and the header a Stratum job describes.
//!
//! Shared by the miner (which searches nonces) and the pool (which recomputes the hash of
//! every submitted share), so both sides agree by construction; the tests pin the byte
//! orders against real Bitcoin blocks so that agreement is not merely with itself.

use sha2::{Digest, Sha256};

use crate::stratum::Notify;

/// Length of a block header.
pub const HEADER_LEN: usize = 80;

/// Double SHA-256, the hash Bitcoin uses for headers, transactions and Merkle nodes.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// A 256-bit share or block target, stored big-endian so that byte-wise comparison is
/// numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target(pub [u8; 32]);

impl Target {
    /// The target of a Stratum difficulty for sha256d: `0xffff * 2^208 / difficulty`,
    /// computed the way cpuminer's `diff_to_target` does (so pool and miner round alike).
    /// Difficulties below 2^-32 saturate to the easiest representable target.
    pub fn from_difficulty(difficulty: f64) -> Target {
        let mut diff = difficulty;
        let mut k: usize = 6;
        while k > 0 && diff > 1.0 {
            diff /= 4_294_967_296.0;
            k -= 1;
        }
        // `as` saturates, which is the behaviour we want for tiny difficulties.
        let m = (4_294_901_760.0 / diff) as u64;
        // Little-endian 32-bit words, word 7 the most significant, as in cpuminer.
        let mut words = [0u32; 8];
        if m == 0 && k == 6 {
            words = [u32::MAX; 8];
        } else {
            words[k] = m as u32;
            words[k + 1] = (m >> 32) as u32;
        }
        let mut be = [0u8; 32];
        for (i, word) in words.iter().rev().enumerate() {
            be[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
        }
        Target(be)
    }

    /// Whether a header hash (raw `sha256d` output, a little-endian number) is at or below
    /// this target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        hash.iter().rev().cmp(self.0.iter()) != std::cmp::Ordering::Greater
    }
}

/// The hash as block explorers print it (byte-reversed hex).
pub fn display_hash(hash: &[u8; 32]) -> String {
    let mut reversed = *hash;
    reversed.reverse();
    hex::encode(reversed)
}

/// Why a job or share field could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkError {
    #[error("field `{field}`: not hexadecimal: {value:?}")]
    NotHex { field: &'static str, value: String },
    #[error("field `{field}`: expected {expected} bytes, got {got}")]
    WrongLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
}

pub(crate) fn decode_hex(field: &'static str, value: &str) -> Result<Vec<u8>, WorkError> {
    hex::decode(value).map_err(|_| WorkError::NotHex {
        field,
        value: value.to_string(),
    })
}

pub(crate) fn decode_fixed<const N: usize>(
    field: &'static str,
    value: &str,
) -> Result<[u8; N], WorkError> {
    let bytes = decode_hex(field, value)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| WorkError::WrongLength {
            field,
            expected: N,
            got: bytes.len(),
        })
}

/// A Stratum job (`mining.notify`) in decoded form. Byte fields keep the wire order
/// Stratum uses; [`Job::header`] converts them to header order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    /// Previous block hash as Stratum sends it: header bytes with every 4-byte word reversed.
    pub prevhash: [u8; 32],
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    /// Merkle branch hashes in raw (header) byte order.
    pub merkle_branch: Vec<[u8; 32]>,
    /// Big-endian, as in the hex Stratum sends.
    pub version: [u8; 4],
    pub nbits: [u8; 4],
    pub ntime: [u8; 4],
    pub clean_jobs: bool,
}

impl Job {
    /// Decodes the hex fields of a `mining.notify`.
    pub fn from_notify(notify: &Notify) -> Result<Job, WorkError> {
        Ok(Job {
            job_id: notify.job_id.clone(),
            prevhash: decode_fixed("prevhash", &notify.prevhash)?,
            coinb1: decode_hex("coinb1", &notify.coinb1)?,
            coinb2: decode_hex("coinb2", &notify.coinb2)?,
            merkle_branch: notify
                .merkle_branch
                .iter()
                .map(|h| decode_fixed("merkle_branch", h))
                .collect::<Result<_, _>>()?,
            version: decode_fixed("version", &notify.version)?,
            nbits: decode_fixed("nbits", &notify.nbits)?,
            ntime: decode_fixed("ntime", &notify.ntime)?,
            clean_jobs: notify.clean_jobs,
        })
    }

    /// The `mining.notify` parameters for this job.
    pub fn to_notify(&self) -> Notify {
        Notify {
            job_id: self.job_id.clone(),
            prevhash: hex::encode(self.prevhash),
            coinb1: hex::encode(&self.coinb1),
            coinb2: hex::encode(&self.coinb2),
            merkle_branch: self.merkle_branch.iter().map(hex::encode).collect(),
            version: hex::encode(self.version),
            nbits: hex::encode(self.nbits),
            ntime: hex::encode(self.ntime),
            clean_jobs: self.clean_jobs,
        }
    }

    /// coinb1 + extranonce1 + extranonce2 + coinb2.
    pub fn coinbase(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Vec<u8> {
        let mut tx = Vec::with_capacity(
            self.coinb1.len() + extranonce1.len() + extranonce2.len() + self.coinb2.len(),
        );
        tx.extend_from_slice(&self.coinb1);
        tx.extend_from_slice(extranonce1);
        tx.extend_from_slice(extranonce2);
        tx.extend_from_slice(&self.coinb2);
        tx
    }

    /// The Merkle root for a coinbase: its txid folded with every branch hash.
    pub fn merkle_root(&self, coinbase: &[u8]) -> [u8; 32] {
        let mut root = sha256d(coinbase);
        let mut pair = [0u8; 64];
        for branch in &self.merkle_branch {
            pair[..32].copy_from_slice(&root);
            pair[32..].copy_from_slice(branch);
            root = sha256d(&pair);
        }
        root
    }

    /// The 80-byte header for this job. `ntime` and `nonce` are the 4 bytes of their hex as
    /// submitted in `mining.submit` (big-endian numbers, like every Stratum 32-bit field).
    pub fn header(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        ntime: [u8; 4],
        nonce: [u8; 4],
    ) -> [u8; HEADER_LEN] {
        let root = self.merkle_root(&self.coinbase(extranonce1, extranonce2));
        assemble_header(
            self.version,
            &self.prevhash,
            &root,
            ntime,
            self.nbits,
            nonce,
        )
    }
}

/// Lays out a header from Stratum-order fields: 32-bit fields byte-reversed to little
/// endian, the previous hash word-swapped back to header order, the Merkle root as is.
pub fn assemble_header(
    version: [u8; 4],
    stratum_prevhash: &[u8; 32],
    merkle_root: &[u8; 32],
    ntime: [u8; 4],
    nbits: [u8; 4],
    nonce: [u8; 4],
) -> [u8; HEADER_LEN] {
    let reversed = |mut b: [u8; 4]| {
        b.reverse();
        b
    };
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&reversed(version));
    for (i, word) in stratum_prevhash.chunks_exact(4).enumerate() {
        let at = 4 + i * 4;
        header[at..at + 4].copy_from_slice(&[word[3], word[2], word[1], word[0]]);
    }
    header[36..68].copy_from_slice(merkle_root);
    header[68..72].copy_from_slice(&reversed(ntime));
    header[72..76].copy_from_slice(&reversed(nbits));
    header[76..80].copy_from_slice(&reversed(nonce));
    header
}

/// Searches nonces for one piece of work. The first 64 header bytes do not depend on the
/// nonce, so their SHA-256 state (the midstate) is computed once and cloned per nonce.
pub struct NonceScanner {
    midstate: Sha256,
    tail: [u8; 16],
}

impl NonceScanner {
    pub fn new(header: &[u8; HEADER_LEN]) -> NonceScanner {
        let mut midstate = Sha256::new();
        midstate.update(&header[..64]);
        let mut tail = [0u8; 16];
        tail.copy_from_slice(&header[64..]);
        NonceScanner { midstate, tail }
    }

    /// sha256d of the header with `nonce` (the submitted big-endian bytes) in place.
    pub fn hash(&mut self, nonce: [u8; 4]) -> [u8; 32] {
        self.tail[12..16].copy_from_slice(&[nonce[3], nonce[2], nonce[1], nonce[0]]);
        let mut hasher = self.midstate.clone();
        hasher.update(self.tail);
        let first = hasher.finalize();
        Sha256::digest(first).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The genesis block's only transaction (its coinbase); its txid is the block's Merkle root.
    const GENESIS_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000";
    const GENESIS_HASH: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";

    #[test]
    fn sha256d_of_the_genesis_header_is_the_genesis_hash() {
        let header = hex::decode(concat!(
            "01000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "3ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a",
            "29ab5f49",
            "ffff001d",
            "1dac2b7c"
        ))
        .unwrap();
        assert_eq!(display_hash(&sha256d(&header)), GENESIS_HASH);
    }

    #[test]
    fn a_stratum_job_for_the_genesis_block_rebuilds_its_header_and_hash() {
        // Split the coinbase anywhere: coinb1 | extranonce1 (4) | extranonce2 (4) | coinb2.
        let coinbase = hex::decode(GENESIS_COINBASE).unwrap();
        let (coinb1, rest) = coinbase.split_at(42);
        let (en1, rest) = rest.split_at(4);
        let (en2, coinb2) = rest.split_at(4);
        let notify = Notify {
            job_id: "genesis".into(),
            prevhash: "00".repeat(32),
            coinb1: hex::encode(coinb1),
            coinb2: hex::encode(coinb2),
            merkle_branch: vec![],
            version: "00000001".into(),
            nbits: "1d00ffff".into(),
            ntime: format!("{:08x}", 1_231_006_505u32),
            clean_jobs: true,
        };
        let job = Job::from_notify(&notify).unwrap();
        assert_eq!(job.to_notify(), notify);
        let root = job.merkle_root(&job.coinbase(en1, en2));
        assert_eq!(
            display_hash(&root),
            "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
        );
        let nonce = 2_083_236_893u32.to_be_bytes();
        let header = job.header(en1, en2, job.ntime, nonce);
        assert_eq!(display_hash(&sha256d(&header)), GENESIS_HASH);
        assert_eq!(NonceScanner::new(&header).hash(nonce), sha256d(&header));
        // Difficulty 1 (the genesis block's own target is 0x1d00ffff = difficulty 1).
        assert!(Target::from_difficulty(1.0).is_met_by(&sha256d(&header)));
    }

    #[test]
    fn block_1_checks_the_word_swapped_stratum_prevhash() {
        // Block 1's previous hash is the genesis hash; Stratum sends it word-swapped.
        let stratum_prevhash: [u8; 32] = decode_fixed(
            "prevhash",
            "0a8ce26f72b3f1b646a2a6c14ff763ae65831e939c085ae10019d66800000000",
        )
        .unwrap();
        let mut root: [u8; 32] = decode_fixed(
            "merkle",
            "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098",
        )
        .unwrap();
        root.reverse();
        let header = assemble_header(
            1u32.to_be_bytes(),
            &stratum_prevhash,
            &root,
            1_231_469_665u32.to_be_bytes(),
            0x1d00_ffffu32.to_be_bytes(),
            2_573_394_689u32.to_be_bytes(),
        );
        assert_eq!(
            display_hash(&sha256d(&header)),
            "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
        );
    }

    #[test]
    fn merkle_branches_fold_left_with_the_coinbase_txid() {
        // Expected value computed independently (Python hashlib) for coinbase "aa" and two
        // branch hashes 0x11.. and 0x22.. .
        let job = Job {
            job_id: "m".into(),
            prevhash: [0; 32],
            coinb1: vec![0xaa],
            coinb2: vec![],
            merkle_branch: vec![[0x11; 32], [0x22; 32]],
            version: [0; 4],
            nbits: [0; 4],
            ntime: [0; 4],
            clean_jobs: false,
        };
        assert_eq!(
            hex::encode(job.merkle_root(&[0xaa])),
            "a9157b4a7e7b8c308e010195e5918744b5acaa1cd016f28017884b7ef06eaabc"
        );
    }

    #[test]
    fn difficulty_targets_match_cpuminer() {
        let t1 = Target::from_difficulty(1.0);
        assert_eq!(
            hex::encode(t1.0),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        let easy = Target::from_difficulty(1.0 / 65536.0);
        assert_eq!(
            hex::encode(easy.0),
            "0000ffff00000000000000000000000000000000000000000000000000000000"
        );
        let hard = Target::from_difficulty(65536.0);
        assert_eq!(
            hex::encode(hard.0),
            "000000000000ffff000000000000000000000000000000000000000000000000"
        );
        // A hash equal to the target meets it; one above does not.
        let mut at = t1.0;
        at.reverse();
        assert!(t1.is_met_by(&at));
        at[28] = 1; // Byte 3 of the big-endian target, still zero in the target: now above it.
        assert!(!t1.is_met_by(&at));
    }

    #[test]
    fn bad_hex_names_the_field() {
        let err = decode_fixed::<4>("nbits", "1d00ff").unwrap_err();
        assert_eq!(err.to_string(), "field `nbits`: expected 4 bytes, got 3");
        let err = decode_hex("coinb1", "zz").unwrap_err();
        assert!(err.to_string().contains("coinb1"), "{err}");
    }
}
