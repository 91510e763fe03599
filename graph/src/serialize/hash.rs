//! The content hash of a graph: SHA-256 of its deterministic binary
//! encoding, in lowercase hex.

use sha2::{Digest, Sha256};

use crate::Graph;

/// Lowercase hex SHA-256 of [`super::encode`]`(graph)`. Equal graphs have
/// equal hashes in every process and on every platform.
pub fn content_hash(graph: &Graph) -> String {
    hex(&Sha256::digest(super::encode(graph)))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_graph_hashes_to_sha256_of_nothing() {
        // The empty graph encodes to zero bytes.
        assert_eq!(
            content_hash(&Graph::default()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
