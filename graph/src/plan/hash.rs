//! The plan hash: one string that the coordinator and every worker compute
//! from the same joint graph and memory plan, so a worker can check that it
//! is about to run exactly what the coordinator planned.
//!
//! It is the lowercase hex SHA-256 of a fixed, versioned byte encoding:
//!
//! 1. the tag `adjoint-plan-v1\0`;
//! 2. the joint graph's [`crate::serialize::encode`] bytes, preceded by
//!    their length;
//! 3. the plan's alignment and totals (arena, parameter, gradient, input
//!    and state bytes);
//! 4. every value's [`Storage`] (a tag byte, then its fields);
//! 5. the gradient layout, slot by slot.
//!
//! Every integer is a little-endian `u64` (value ids included), so the hash
//! is the same on every platform and in every process.

use sha2::{Digest, Sha256};

use super::{MemoryPlan, Storage};
use crate::Graph;

/// The version tag that starts the hashed bytes; bump it when the encoding
/// changes.
const TAG: &[u8] = b"adjoint-plan-v1\0";

/// Lowercase hex SHA-256 over `graph` (the joint graph the plan was made
/// for) and `plan`'s storage classes, offsets and gradient layout; see the
/// module docs for the exact encoding.
pub fn plan_hash(graph: &Graph, plan: &MemoryPlan) -> String {
    let mut h = Hasher(Sha256::new());
    h.0.update(TAG);
    let graph_bytes = crate::serialize::encode(graph);
    h.usize(graph_bytes.len());
    h.0.update(&graph_bytes);

    for total in [
        plan.alignment,
        plan.arena_bytes,
        plan.param_bytes,
        plan.grad_bytes,
        plan.input_bytes,
        plan.state_bytes,
    ] {
        h.usize(total);
    }

    h.usize(plan.storage.len());
    for storage in &plan.storage {
        h.storage(storage);
    }

    h.usize(plan.grad_layout.len());
    for slot in &plan.grad_layout {
        h.u64(u64::from(slot.param.0));
        h.u64(u64::from(slot.value.0));
        h.usize(slot.offset);
        h.usize(slot.bytes);
    }
    h.usize(plan.grad_copies.len());
    for &copy in &plan.grad_copies {
        h.usize(copy);
    }

    hex(&h.0.finalize())
}

/// SHA-256 with the fixed-width writers of the encoding.
struct Hasher(Sha256);

impl Hasher {
    fn u64(&mut self, x: u64) {
        self.0.update(x.to_le_bytes());
    }

    fn usize(&mut self, x: usize) {
        self.u64(x as u64);
    }

    fn storage(&mut self, storage: &Storage) {
        match *storage {
            Storage::Arena { offset, bytes } => {
                self.0.update([0]);
                self.usize(offset);
                self.usize(bytes);
            }
            Storage::Param(index) => {
                self.0.update([1]);
                self.usize(index);
            }
            Storage::Input(index) => {
                self.0.update([2]);
                self.usize(index);
            }
            Storage::State(index) => {
                self.0.update([3]);
                self.usize(index);
            }
            Storage::Grad { offset, bytes } => {
                self.0.update([4]);
                self.usize(offset);
                self.usize(bytes);
            }
            Storage::Alias { of } => {
                self.0.update([5]);
                self.u64(u64::from(of.0));
            }
            Storage::Unused => self.0.update([6]),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::grad;
    use crate::plan::{PlanOptions, plan_memory};
    use crate::zoo::{MlpConfig, mlp};

    fn joint(batch: usize, hidden: usize) -> (Graph, MemoryPlan) {
        let cfg = MlpConfig {
            input: 8,
            hidden: vec![hidden],
            classes: 3,
            batch: None,
        };
        let graph = mlp(&cfg).unwrap().bind_batch(batch);
        let loss = graph.loss.unwrap();
        let joint = grad(&graph, loss, &graph.trainable_params()).unwrap();
        let plan = plan_memory(&joint.graph, &PlanOptions::with_grads(&joint.grads)).unwrap();
        (joint.graph, plan)
    }

    #[test]
    fn the_same_graph_gives_the_same_hash_and_a_different_one_another() {
        let (g, p) = joint(4, 16);
        let hash = plan_hash(&g, &p);
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let (g2, p2) = joint(4, 16);
        assert_eq!(plan_hash(&g2, &p2), hash);
        let (g3, p3) = joint(5, 16);
        assert_ne!(plan_hash(&g3, &p3), hash);
    }

    #[test]
    fn a_changed_offset_changes_the_hash() {
        let (g, p) = joint(4, 16);
        let mut moved = p.clone();
        let arena = moved
            .storage
            .iter_mut()
            .find(|s| matches!(s, Storage::Arena { .. }))
            .unwrap();
        if let Storage::Arena { offset, .. } = arena {
            *offset += 64;
        }
        assert_ne!(plan_hash(&g, &moved), plan_hash(&g, &p));
    }
}
