//! Loading and saving graphs: protobuf and proto3 JSON.
