//! The reference workload models.
