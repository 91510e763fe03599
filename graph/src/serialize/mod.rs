//! Loading and saving graphs: protobuf and proto3 JSON.
//!
//! The wire schema is `adjoint.v1.Graph` (`proto/adjoint/v1/graph.proto`,
//! explained in `docs/graph-format.md`). Values are referred to by name;
//! [`to_proto`] declares every value, while [`from_proto`] also accepts node
//! outputs left undeclared and types them by shape inference. Loading never
//! panics: every problem is an [`crate::Error`] naming the node, value or
//! attribute, and the result is checked by [`crate::validate::validate`].
//!
//! The binary encoding is deterministic (fields in tag order, node
//! attributes in sorted order), so [`content_hash`] identifies a graph:
//! `from_proto(&to_proto(g)) == g` and `encode(&decode(&encode(g))?) ==
//! encode(g)` for every valid graph.
//!
//! - [`to_proto`] / [`from_proto`]: the IR and the prost message.
//! - [`encode`] / [`decode`]: binary protobuf.
//! - [`to_json`] / [`from_json`]: proto3 JSON (pretty, stable).
//! - [`content_hash`]: lowercase hex SHA-256 of [`encode`].

mod convert;
mod from_proto;
mod hash;
mod json;
mod to_proto;

use adjoint_proto::v1;
use prost::Message;

use crate::{Error, Graph, Result};

pub use convert::BATCH_SYMBOL;
pub use from_proto::from_proto;
pub use hash::content_hash;
pub use to_proto::to_proto;

/// The binary protobuf encoding of `graph` (deterministic).
pub fn encode(graph: &Graph) -> Vec<u8> {
    to_proto(graph).encode_to_vec()
}

/// Loads a graph from binary protobuf. Truncated or malformed bytes give
/// [`Error::Decode`] with prost's message.
pub fn decode(bytes: &[u8]) -> Result<Graph> {
    let proto = v1::Graph::decode(bytes).map_err(|e| Error::Decode(format!("protobuf: {e}")))?;
    from_proto(&proto)
}

/// The proto3 JSON form of `graph`, pretty-printed; the same graph always
/// gives the same text.
pub fn to_json(graph: &Graph) -> String {
    json::write(&to_proto(graph))
}

/// Loads a graph from proto3 JSON. Syntax and schema errors give
/// [`Error::Decode`] with serde's line and column and the JSON path of the
/// field.
pub fn from_json(text: &str) -> Result<Graph> {
    from_proto(&json::parse(text)?)
}
