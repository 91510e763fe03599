use adjoint_graph::serialize::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
struct Rng(u64);
impl Rng { fn next(&mut self) -> u64 { self.0 ^= self.0 << 13; self.0 ^= self.0 >> 7; self.0 ^= self.0 << 17; self.0 }
  fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T { &v[(self.next() % v.len() as u64) as usize] } }
const OPS: &[&str] = &["Neg","Exp","Relu","Gelu","Cast","Add","Pow","Equal","Greater","Where","MatMul","ReduceSum","ReduceMean","ReduceMax","Reshape","Transpose","Broadcast","Concat","Slice","Pad","Constant","Gather","ScatterAdd","OneHot","Softmax","LogSoftmax","LayerNorm","LayerNormGrad","GeluGrad","Dropout","CausalMask","SoftmaxCrossEntropy","SoftmaxCrossEntropyGrad","Mse"];
const ATTRS: &[&str] = &["axis","axes","keep_dims","perm","shape","start","end","before","after","value","dtype","size","depth","eps","p","key","fill","approximate","to","trans_a","trans_b"];
fn rand_int(r: &mut Rng) -> i64 { *r.pick(&[0i64,1,2,3,-1,-2,-3,4,5,i64::MAX,i64::MIN,1<<40, -(1<<40), 7]) }
fn rand_shape(r: &mut Rng) -> Value {
    let rank = r.next() % 5;
    let dims: Vec<Value> = (0..rank).map(|_| if r.next() % 5 == 0 { json!({"symbol":"batch"}) } else { json!({"size": *r.pick(&[0u64,1,2,3,4,1<<20,1<<26])}) }).collect();
    json!({"dims": dims})
}
fn rand_attr(r: &mut Rng) -> Value {
    match r.next() % 8 {
        0 => json!({"int": rand_int(r).to_string()}),
        1 => json!({"float": *r.pick(&[0.0, -1.0, 0.5, 1e300, 1.0])}),
        2 => json!({"string": *r.pick(&["tanh","erf","x"])}),
        3 => json!({"bool": r.next()%2==0}),
        4 => { let n = r.next()%5; json!({"ints": {"values": (0..n).map(|_| rand_int(r).to_string()).collect::<Vec<_>>()}}) }
        5 => json!({"floats": {"values": [1.0]}}),
        6 => json!({"dtype": 1 + (r.next()%7) as i64}),
        _ => json!({"shape": rand_shape(r)}),
    }
}
#[test]
fn fuzz() {
    std::panic::set_hook(Box::new(|_| {}));
    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut panics: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut oks = 0;
    for _ in 0..300000 {
        let nv = 1 + r.next() % 4;
        let values: Vec<Value> = (0..nv).map(|i| json!({"name": format!("v{i}"), "dtype": 1 + (r.next()%7) as i64, "shape": rand_shape(&mut r)})).collect();
        let ni = r.next() % 4;
        let inputs: Vec<String> = (0..ni).map(|_| format!("v{}", r.next()%nv)).collect();
        let mut attrs = serde_json::Map::new();
        for _ in 0..r.next()%4 { attrs.insert(r.pick(ATTRS).to_string(), rand_attr(&mut r)); }
        let op = *r.pick(OPS);
        let nout = if op == "LayerNormGrad" { 3 } else { 1 };
        let j = json!({"values": values, "nodes": [{"name":"n","op":op,"inputs":inputs,"outputs":(0..nout).map(|k| format!("o{k}")).collect::<Vec<_>>(),"attributes":attrs}],
            "inputs": (0..nv).map(|i| json!({"value": format!("v{i}"), "role": 1})).collect::<Vec<_>>(), "outputs": ["o0"]});
        let text = j.to_string();
        let res = std::panic::catch_unwind(|| {
            if let Ok(g) = from_json(&text) { assert_eq!(decode(&encode(&g)).as_ref(), Ok(&g)); true } else { false }
        });
        match res {
            Ok(ok) => oks += usize::from(ok),
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                let key = format!("{op}: {msg}");
                panics.entry(key).or_insert((0, text.clone())).0 += 1;
            }
        }
    }
    let _ = std::panic::take_hook();
    println!("ok graphs: {oks}");
    for (k, (n, ex)) in &panics { println!("PANIC x{n}: {k}\n   e.g. {ex}"); }
}
