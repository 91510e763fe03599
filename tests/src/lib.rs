//! End-to-end tests of adjoint.
//!
//! The tests under `tests/tests/` start real coordinator and worker processes
//! on loopback and drive them through the public API. This library will hold
//! the sandbox that starts a coordinator and N workers and waits for
//! conditions rather than sleeping. The service does not exist yet, so the
//! end-to-end suite is empty; the graph crate carries its own tests.
