//! Inputs that passed the check against a model's declared inputs. [`CheckedInputs`] can only be
//! made by [`check`] (and grown by stacking two checked batches), so the unsafe copy into ONNX
//! Runtime's buffers, which relies on every tensor's bytes matching its shape, lives here next to
//! the check that makes it sound, and no other code path can hand it unchecked tensors.

use ort::memory::Allocator;
use ort::value::{DynTensor, DynValue};

use super::bindings::wasi::nn::errors::ErrorCode;
use super::onnx::Slot;
use super::tensor::{self, Tensor};
use super::{Failure, NnResult};

/// Named tensors, inputs or outputs of one inference.
pub type Named = Vec<(String, Tensor)>;

/// Inputs of one inference (or of a batch of them), in the model's declared order, each tensor's
/// bytes exactly `prod(dims) * size_of(type)` and within the tensor limit.
#[derive(Debug)]
pub struct CheckedInputs(Named);

/// Checks named inputs against a model's declared inputs (`slots`): every input given exactly
/// once, element types equal, ranks equal, fixed dimensions equal, sizes consistent. `model` names
/// the model in messages.
pub fn check(model: &str, slots: &[Slot], inputs: Named) -> NnResult<CheckedInputs> {
    let invalid = |m: String| Failure::new(ErrorCode::InvalidArgument, m);
    let expected: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
    for (i, (name, t)) in inputs.iter().enumerate() {
        let slot = slots.iter().find(|s| &s.name == name).ok_or_else(|| {
            invalid(format!(
                "model `{model}` has no input `{name}`; its inputs are {expected:?}"
            ))
        })?;
        if inputs[..i].iter().any(|(n, _)| n == name) {
            return Err(invalid(format!("input `{name}` is given twice")));
        }
        let Some(ty) = slot.ty else {
            return Err(Failure::new(
                ErrorCode::UnsupportedOperation,
                format!(
                    "input `{name}` of model `{model}` is not a numeric tensor; wasi:nn cannot feed it"
                ),
            ));
        };
        if t.ty != ty {
            return Err(invalid(format!(
                "input `{name}` must be {} but is {}",
                tensor::type_name(ty),
                tensor::type_name(t.ty)
            )));
        }
        let fits = t.dims.len() == slot.dims.len()
            && t.dims
                .iter()
                .zip(&slot.dims)
                .all(|(d, s)| *s < 0 || i64::from(*d) == *s);
        if !fits {
            return Err(invalid(format!(
                "input `{name}` has dimensions {:?} but the model expects {:?} (-1 = any)",
                t.dims, slot.dims
            )));
        }
        t.check_size()
            .map_err(|m| invalid(format!("input `{name}`: {m}")))?;
    }
    if let Some(missing) = slots
        .iter()
        .find(|s| !inputs.iter().any(|(n, _)| *n == s.name))
    {
        return Err(invalid(format!(
            "input `{}` of model `{model}` is missing",
            missing.name
        )));
    }
    // The model's declared order: queued inferences stack input by input.
    let mut inputs = inputs;
    inputs.sort_by_key(|(n, _)| slots.iter().position(|s| s.name == *n));
    Ok(CheckedInputs(inputs))
}

impl CheckedInputs {
    /// The tensors, in the model's declared order.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.0
    }

    /// The rows these inputs add to a batch: the common first dimension of every input, `None`
    /// when they cannot join a batch (a scalar input, or inputs that disagree on it).
    pub fn rows(&self) -> Option<u32> {
        let first = *self.0.first()?.1.dims.first()?;
        self.0
            .iter()
            .all(|(_, t)| t.dims.first() == Some(&first))
            .then_some(first)
    }

    /// Whether `other` can be stacked under these inputs: same names, types and trailing
    /// dimensions, and both batchable.
    pub fn stacks_with(&self, other: &CheckedInputs) -> bool {
        self.rows().is_some()
            && other.rows().is_some()
            && self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((n, a), (m, b))| {
                n == m && a.ty == b.ty && a.dims.get(1..) == b.dims.get(1..)
            })
    }

    /// Appends `other`'s rows along the first dimension. Both were checked and stack (same names,
    /// types and trailing dimensions), so every stacked tensor's bytes still match its shape; a
    /// pair that does not stack is refused.
    pub fn stack(&mut self, other: CheckedInputs) -> NnResult<()> {
        if !self.stacks_with(&other) {
            return Err(Failure::new(
                ErrorCode::RuntimeError,
                "inputs that do not stack cannot join a batch",
            ));
        }
        for ((_, into), (_, t)) in self.0.iter_mut().zip(other.0) {
            into.dims[0] += t.dims[0];
            into.data.extend_from_slice(&t.data);
        }
        Ok(())
    }

    /// Grows the batch to `rows` rows by repeating its last row (outputs for those rows are
    /// dropped). Repeating keeps every stacked tensor's bytes matching its shape, as `stack` does;
    /// inputs that cannot be batched, or that already have `rows` or more, are left as they are.
    pub fn pad_to(&mut self, rows: u32) {
        let Some(have) = self.rows().filter(|&r| r > 0 && r < rows) else {
            return;
        };
        for (_, t) in &mut self.0 {
            let row = t.data.len() / have as usize;
            let last = t.data[t.data.len() - row..].to_vec();
            t.data.reserve(row * (rows - have) as usize);
            for _ in have..rows {
                t.data.extend_from_slice(&last);
            }
            t.dims[0] = rows;
        }
    }

    /// Copies the inputs into tensors allocated by ONNX Runtime, ready for `Session::run`.
    pub fn into_values(self) -> NnResult<Vec<(String, DynValue)>> {
        let runtime = |m: String| Failure::new(ErrorCode::RuntimeError, m);
        let allocator = Allocator::default();
        let mut values = Vec::with_capacity(self.0.len());
        for (name, t) in self.0 {
            let shape: Vec<i64> = t.dims.iter().map(|d| i64::from(*d)).collect();
            let mut value = DynTensor::new(&allocator, tensor::to_ort(t.ty), shape)
                .map_err(|e| runtime(format!("cannot allocate input `{name}`: {e}")))?;
            // SAFETY: a `CheckedInputs` only exists after `check` verified (and `stack` kept)
            // `t.data.len() == prod(dims) * size_of(ty)`, which is exactly the buffer ONNX Runtime
            // allocated for this shape and element type on the CPU; the buffers cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    t.data.as_ptr(),
                    value.data_ptr_mut().cast::<u8>(),
                    t.data.len(),
                );
            }
            values.push((name, value.into_dyn()));
        }
        Ok(values)
    }
}
