//! Training losses on an imported model: [`super::with_loss`] adds a label
//! input and a scalar loss on one of the ONNX outputs.

use super::Imported;
use crate::{Builder, DType, Error, Graph, InputRole, Result, Shape};

/// See [`super::with_loss`].
pub(crate) fn with_loss(
    imported: &Imported,
    kind: &str,
    output: &str,
    label: &str,
) -> Result<Graph> {
    let index = imported
        .outputs
        .iter()
        .position(|o| o == output)
        .ok_or_else(|| Error::InvalidValue {
            value: output.to_owned(),
            message: format!(
                "is not an output of the model (its outputs: {})",
                imported.outputs.join(", ")
            ),
        })?;
    let y = *imported
        .graph
        .outputs
        .get(index)
        .ok_or_else(|| Error::InvalidValue {
            value: output.to_owned(),
            message: "the imported graph lacks this output".into(),
        })?;
    let mut b = Builder::from_graph(imported.graph.clone());
    let ty = b.ty(y).clone();
    if !ty.dtype.is_float() {
        return Err(Error::InvalidValue {
            value: output.to_owned(),
            message: format!("a loss needs a floating-point output, found {ty}"),
        });
    }
    let loss = match kind {
        "cross_entropy" => {
            let dims = ty.shape.dims();
            let Some((_, lead)) = dims.split_last() else {
                return Err(Error::InvalidValue {
                    value: output.to_owned(),
                    message: format!("cross_entropy needs logits [..., C], found {ty}"),
                });
            };
            let labels = b.input(label, DType::I64, Shape(lead.to_vec()), InputRole::Label)?;
            b.softmax_cross_entropy(y, labels)?
        }
        "mse" => {
            let target = b.input(label, ty.dtype, ty.shape.clone(), InputRole::Label)?;
            b.mse(y, target)?
        }
        other => {
            return Err(Error::Unsupported(format!(
                "loss kind '{other}': expected 'cross_entropy' or 'mse'"
            )));
        }
    };
    b.rename_unique(loss, "loss");
    b.loss(loss);
    b.finish()
}
