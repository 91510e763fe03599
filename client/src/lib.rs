//! The adjoint client library and CLI.
