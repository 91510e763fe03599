//! Evaluation on a held-out split: the loss equals the f64 interpreter's
//! mean over the same batches, two ranks agree with one, a last partial
//! batch is left out and counted, dropout is off, and a split too small for
//! one batch is an error.

use std::collections::BTreeMap;
use std::thread;

use adjoint_graph::interp::{EvalCx, Tensor, run};
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_graph::{Builder, DType, Dim, Graph, Init, InputRole, Shape, init};
use adjoint_kernels::CpuBackend;
use adjoint_worker::ExecOptions;
use adjoint_worker::collective::{Collective, LocalGroup};
use adjoint_worker::data::{Dataset, HostTensor};
use adjoint_worker::dist::{EvalResult, Evaluator};

const FEATURES: usize = 8;
const CLASSES: usize = 4;
const BATCH: usize = 4;

fn mlp() -> Graph {
    zoo::mlp(&MlpConfig {
        input: FEATURES,
        hidden: vec![16],
        classes: CLASSES,
        batch: None,
    })
    .unwrap()
}

fn split(samples: usize) -> (Vec<f32>, Vec<i64>) {
    let x = (0..samples * FEATURES)
        .map(|j| ((j as f32) * 0.37).sin())
        .collect();
    let labels = (0..samples as i64)
        .map(|s| (s * 5 + 1) % CLASSES as i64)
        .collect();
    (x, labels)
}

fn dataset(g: &Graph, x: &[f32], labels: &[i64]) -> Dataset {
    let samples = labels.len();
    Dataset::new(
        g,
        BTreeMap::from([
            (
                "x".to_owned(),
                HostTensor::from_f32(vec![samples, FEATURES], x),
            ),
            (
                "labels".to_owned(),
                HostTensor::from_i64(vec![samples], labels),
            ),
        ]),
    )
    .unwrap()
}

/// The initial parameters, named.
fn params(g: &Graph, seed: u64) -> BTreeMap<String, HostTensor> {
    g.params
        .iter()
        .map(|p| {
            let t = init::materialize(g, p.value, &p.init, seed).unwrap();
            let data: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
            (
                g.name_of(p.value).to_owned(),
                HostTensor::from_f32(t.shape.clone(), &data),
            )
        })
        .collect()
}

/// The interpreter's loss of `params` on samples `indices`.
fn reference_loss(
    g: &Graph,
    params: &BTreeMap<String, HostTensor>,
    x: &[f32],
    labels: &[i64],
    indices: &[usize],
) -> f64 {
    let bound = g.bind_batch(indices.len());
    let mut feeds = BTreeMap::new();
    for p in &bound.params {
        let t = &params[bound.name_of(p.value)];
        let data = t.to_f32().unwrap().iter().map(|&v| f64::from(v)).collect();
        feeds.insert(p.value, Tensor::new(t.shape.clone(), data));
    }
    let xs = indices
        .iter()
        .flat_map(|&i| {
            x[i * FEATURES..(i + 1) * FEATURES]
                .iter()
                .map(|&v| f64::from(v))
        })
        .collect();
    let ls = indices.iter().map(|&i| labels[i] as f64).collect();
    feeds.insert(
        bound.find("x").unwrap(),
        Tensor::new(vec![indices.len(), FEATURES], xs),
    );
    feeds.insert(
        bound.find("labels").unwrap(),
        Tensor::new(vec![indices.len()], ls),
    );
    let cx = EvalCx {
        seed: 0,
        step: 0,
        rank: 0,
        exact_float_casts: false,
    };
    let env = run(&bound, &feeds, &cx).unwrap();
    env[bound.loss.unwrap().index()].as_ref().unwrap().data[0]
}

/// Evaluates on `world` ranks (threads joined by the in-process
/// collective) and returns each rank's result and dropped count.
fn evaluate(
    g: &Graph,
    x: &[f32],
    labels: &[i64],
    world: usize,
    seed: u64,
) -> Vec<(EvalResult, usize)> {
    let params = params(g, seed);
    let handles: Vec<_> = LocalGroup::new(world)
        .into_iter()
        .enumerate()
        .map(|(rank, mut coll)| {
            let (g, params) = (g.clone(), params.clone());
            let data = dataset(&g, x, labels);
            thread::spawn(move || {
                let mut e = Evaluator::new(
                    CpuBackend::new(),
                    &g,
                    data,
                    BATCH,
                    rank,
                    world,
                    ExecOptions::default(),
                )
                .unwrap();
                let r = e
                    .evaluate(&params, &mut coll as &mut dyn Collective)
                    .unwrap();
                (r, e.dropped())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn eval_loss_is_the_mean_over_full_batches_and_ranks_agree() {
    let g = mlp();
    // 18 samples: one rank has 4 full batches and 2 left over; two ranks
    // have 9 each, 2 full batches and 1 left over.
    let (x, labels) = split(18);
    let seed = 7;
    let params = params(&g, seed);

    let one = evaluate(&g, &x, &labels, 1, seed);
    let batches: Vec<Vec<usize>> = (0..4)
        .map(|b| (b * BATCH..(b + 1) * BATCH).collect())
        .collect();
    let want = batches
        .iter()
        .map(|b| reference_loss(&g, &params, &x, &labels, b))
        .sum::<f64>()
        / 4.0;
    let (r, dropped) = one[0];
    assert_eq!((r.samples, dropped), (16, 2));
    assert!(
        (f64::from(r.loss) - want).abs() <= 1e-5 * want.abs(),
        "one rank: {} vs the interpreter's {want}",
        r.loss
    );

    let two = evaluate(&g, &x, &labels, 2, seed);
    assert_eq!(two[0].0, two[1].0, "the ranks disagree");
    assert_eq!((two[0].0.samples, two[0].1, two[1].1), (16, 1, 1));
    // Rank r takes samples r, r + 2, ...: batches of those, in order.
    let mut want = 0.0;
    for rank in 0..2 {
        let mine: Vec<usize> = (rank..18).step_by(2).collect();
        for b in mine.chunks_exact(BATCH) {
            want += reference_loss(&g, &params, &x, &labels, b);
        }
    }
    want /= 4.0;
    assert!(
        (f64::from(two[0].0.loss) - want).abs() <= 1e-5 * want.abs(),
        "two ranks: {} vs the interpreter's {want}",
        two[0].0.loss
    );
}

/// `x -> Dropout(p) -> x · W -> cross-entropy`, batch symbolic.
fn dropout_model(p: f64) -> Graph {
    let mut b = Builder::new("dropout");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![Dim::Batch, FEATURES.into()]),
            InputRole::Data,
        )
        .unwrap();
    let labels = b
        .input(
            "labels",
            DType::I64,
            Shape(vec![Dim::Batch]),
            InputRole::Label,
        )
        .unwrap();
    let w = b
        .param(
            "w",
            DType::F32,
            &[FEATURES, CLASSES],
            Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
        )
        .unwrap();
    let h = b.dropout(x, p, 17).unwrap();
    let logits = b.matmul(h, w).unwrap();
    let loss = b.softmax_cross_entropy(logits, labels).unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

#[test]
fn dropout_is_off_in_evaluation() {
    let (x, labels) = split(8);
    let loss_of = |graph: &Graph| {
        let mut coll = LocalGroup::new(1).pop().unwrap();
        let mut e = Evaluator::new(
            CpuBackend::new(),
            graph,
            dataset(graph, &x, &labels),
            BATCH,
            0,
            1,
            ExecOptions::default(),
        )
        .unwrap();
        e.evaluate(&params(graph, 1), &mut coll).unwrap().loss
    };
    // A rate of 0.9 would change the loss a lot if evaluation applied it.
    assert_eq!(loss_of(&dropout_model(0.9)), loss_of(&dropout_model(0.0)));
}

#[test]
fn a_split_that_fills_no_batch_is_an_error() {
    let g = mlp();
    let (x, labels) = split(3);
    let mut coll = LocalGroup::new(1).pop().unwrap();
    let mut e = Evaluator::new(
        CpuBackend::new(),
        &g,
        dataset(&g, &x, &labels),
        BATCH,
        0,
        1,
        ExecOptions::default(),
    )
    .unwrap();
    let err = e
        .evaluate(&params(&g, 0), &mut coll)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fills no batch of 4"), "{err}");
}
