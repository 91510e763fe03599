use std::collections::BTreeMap;
use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::Tensor;
use adjoint_graph::{Builder, DType, InputRole, Shape, ValueId};

fn t(shape: &[usize], data: &[f64]) -> Tensor { Tensor::new(shape.to_vec(), data.to_vec()) }

fn run(name: &str, shapes: &[(&[usize], DType, Vec<f64>)], wrt_n: usize, f: &dyn Fn(&mut Builder, &[ValueId]) -> adjoint_graph::Result<ValueId>) {
    let mut b = Builder::new(name);
    let mut ids = vec![];
    let mut feeds = BTreeMap::new();
    for (i, (s, d, v)) in shapes.iter().enumerate() {
        let id = b.input(&format!("x{i}"), *d, Shape::of(s), InputRole::Data).unwrap();
        feeds.insert(id, t(s, v));
        ids.push(id);
    }
    let y = match f(&mut b, &ids) { Ok(y) => y, Err(e) => { println!("{name}: build error {e}"); return; } };
    b.output(y);
    let g = b.finish().unwrap();
    let wrt = &ids[..wrt_n];
    let o = Options::default();
    match gradcheck::check(&g, wrt, &feeds, &o) { Ok(r) => println!("{name} o1 {}", if r.passed() {"pass".to_string()} else {r.to_string()}), Err(e) => println!("{name} o1 ERR {e}") }
    match gradcheck::check_second_order(&g, wrt, &feeds, &o) { Ok(r) => println!("{name} o2 {}", if r.passed() {"pass".to_string()} else {r.to_string()}), Err(e) => println!("{name} o2 ERR {e}") }
}

#[test]
fn probe() {
    let big = vec![800.0, -800.0, 799.0, 3.0, 801.0, -5.0];
    run("softmax_big", &[(&[2, 3], DType::F64, big.clone())], 1, &|b, x| b.softmax(x[0], -1));
    run("logsoftmax_big", &[(&[2, 3], DType::F64, big.clone())], 1, &|b, x| b.log_softmax(x[0], -1));
    run("sce_big", &[(&[2, 3], DType::F64, big.clone()), (&[2], DType::I64, vec![1.0, 2.0])], 1, &|b, x| b.softmax_cross_entropy(x[0], x[1]));
    run("sigmoid_big", &[(&[4], DType::F64, vec![-800.0, 800.0, -40.0, 40.0])], 1, &|b, x| b.sigmoid(x[0]));
    run("tanh_big", &[(&[4], DType::F64, vec![-800.0, 800.0, -40.0, 40.0])], 1, &|b, x| b.tanh(x[0]));
    run("gelu_tanh_big", &[(&[4], DType::F64, vec![-800.0, 800.0, -40.0, 40.0])], 1, &|b, x| b.gelu(x[0], adjoint_graph::ops::GeluApprox::Tanh));
    run("gelu_erf_big", &[(&[4], DType::F64, vec![-800.0, 800.0, -40.0, 40.0])], 1, &|b, x| b.gelu(x[0], adjoint_graph::ops::GeluApprox::Erf));
    run("concat1", &[(&[2, 3], DType::F64, big.iter().map(|v| v / 400.0).collect())], 1, &|b, x| b.concat(&x[..1], 1));
    run("slice_empty", &[(&[2, 3], DType::F64, vec![1.0; 6])], 1, &|b, x| { let s = b.slice(x[0], 1, 2, 2)?; let e = b.exp(s)?; let z = b.sum_all(e)?; let m = b.mul(x[0], x[0])?; let w = b.sum_all(m)?; b.add(z, w) });
    run("pow_int_exp_neg_base", &[(&[3], DType::F64, vec![-1.5, -0.5, 2.0]), (&[1], DType::F64, vec![2.0])], 1, &|b, x| b.pow(x[0], x[1]));
    run("pow_zero_base", &[(&[3], DType::F64, vec![0.0, 0.5, 2.0]), (&[1], DType::F64, vec![2.0])], 1, &|b, x| b.pow(x[0], x[1]));
    run("sqrt_then_square", &[(&[3], DType::F64, vec![0.25, 0.5, 2.0])], 1, &|b, x| { let s = b.sqrt(x[0])?; b.mul(s, s) });
    run("reduce_mean_all_keep", &[(&[2, 3], DType::F64, big.iter().map(|v| v / 400.0).collect())], 1, &|b, x| { let m = b.mean(x[0], &[-2, -1], true)?; b.exp(m) });
    run("layernorm_const_row", &[(&[2, 3], DType::F64, vec![1.0, 1.0, 1.0, 0.5, -0.2, 0.1]), (&[3], DType::F64, vec![1.0, 2.0, 0.5]), (&[3], DType::F64, vec![0.1, 0.2, 0.3])], 3, &|b, x| b.layer_norm(x[0], x[1], x[2], 1e-5));
    run("dropout_p0", &[(&[4], DType::F64, vec![1.0, 2.0, 3.0, 4.0])], 1, &|b, x| b.dropout(x[0], 0.0, 3));
    run("matmul_rank2_rank4", &[(&[3, 2], DType::F64, vec![0.1, 0.2, 0.3, -0.4, 0.5, 0.6]), (&[2, 1, 2, 2], DType::F64, vec![1.0, -1.0, 0.5, 0.25, 2.0, 1.0, -0.5, 0.3])], 2, &|b, x| b.matmul(x[0], x[1]));
    run("mse_scalar", &[(&[], DType::F64, vec![1.5]), (&[], DType::F64, vec![-0.5])], 2, &|b, x| b.mse(x[0], x[1]));
    run("scatter_neg_axis_2d_idx", &[(&[2, 2, 2, 3], DType::F64, (0..24).map(|i| i as f64 * 0.1).collect()), (&[2, 2], DType::I64, vec![0.0, 2.0, 2.0, 2.0])], 1, &|b, x| { let s = b.scatter_add(x[0], x[1], -2, 3)?; b.mul(s, s) });
    run("gather_scalar_idx", &[(&[3, 2], DType::F64, (0..6).map(|i| i as f64 * 0.3).collect()), (&[], DType::I64, vec![2.0])], 1, &|b, x| { let s = b.gather(x[0], x[1], 0)?; b.mul(s, s) });
    run("where_bool_input", &[(&[3], DType::F64, vec![1.0, 2.0, 3.0]), (&[3], DType::F64, vec![-1.0, -2.0, -3.0]), (&[3], DType::Bool, vec![1.0, 0.0, 1.0])], 2, &|b, x| { let m = b.mul(x[0], x[1])?; b.select(x[2], m, x[1]) });
    run("relu_at_zero_vjp_ok?", &[(&[3], DType::F64, vec![0.5, -0.5, 1.0])], 1, &|b, x| { let r = b.relu(x[0])?; b.mul(r, r) });
    run("cast_f32", &[(&[3], DType::F64, vec![0.5, -0.5, 1.0])], 1, &|b, x| { let c = b.cast(x[0], DType::F32)?; let e = b.exp(c)?; b.cast(e, DType::F64) });
    run("exp_chain_third", &[(&[3], DType::F64, vec![0.5, -0.5, 1.0])], 1, &|b, x| { let e = b.exp(x[0])?; let t = b.tanh(e)?; b.mul(t, x[0]) });
}
