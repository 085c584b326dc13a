//! Tensors as the guest hands them over: dimensions, an element type and row-major little-endian
//! bytes. Pure data; checked against a model's inputs before anything reaches ONNX Runtime.

use ort::value::TensorElementType;

use super::bindings::wasi::nn::tensor::TensorType;

/// Every element type wasi:nn can carry.
pub const ALL_TYPES: [TensorType; 7] = [
    TensorType::Fp16,
    TensorType::Fp32,
    TensorType::Fp64,
    TensorType::Bf16,
    TensorType::U8,
    TensorType::I32,
    TensorType::I64,
];

/// Largest tensor (in bytes) the host accepts as an input or produces as an output.
pub const MAX_TENSOR_BYTES: usize = 256 << 20;

/// The host side of a `wasi:nn/tensor.tensor` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub dims: Vec<u32>,
    /// Element type.
    pub ty: TensorType,
    /// Row-major little-endian bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// Checks that the bytes are exactly `prod(dims) * size_of(ty)`.
    pub fn check_size(&self) -> Result<(), String> {
        let expected = byte_len(&self.dims, self.ty)
            .ok_or_else(|| format!("dimensions {:?} overflow", self.dims))?;
        if expected > MAX_TENSOR_BYTES {
            return Err(format!(
                "tensor of {expected} bytes exceeds the node's limit of {MAX_TENSOR_BYTES}"
            ));
        }
        if expected != self.data.len() {
            return Err(format!(
                "tensor data is {} bytes but dimensions {:?} of {} need {expected}",
                self.data.len(),
                self.dims,
                type_name(self.ty)
            ));
        }
        Ok(())
    }
}

/// Bytes a tensor of `dims` and `ty` occupies, or `None` on overflow.
pub fn byte_len(dims: &[u32], ty: TensorType) -> Option<usize> {
    dims.iter()
        .try_fold(element_size(ty), |acc, d| acc.checked_mul(*d as usize))
}

/// Size of one element.
pub fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
        TensorType::U8 => 1,
    }
}

/// The wasi:nn name of a type, for messages.
pub fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "fp16",
        TensorType::Fp32 => "fp32",
        TensorType::Fp64 => "fp64",
        TensorType::Bf16 => "bf16",
        TensorType::U8 => "u8",
        TensorType::I32 => "i32",
        TensorType::I64 => "i64",
    }
}

/// ONNX Runtime's element type for a wasi:nn type.
pub fn to_ort(ty: TensorType) -> TensorElementType {
    match ty {
        TensorType::Fp16 => TensorElementType::Float16,
        TensorType::Fp32 => TensorElementType::Float32,
        TensorType::Fp64 => TensorElementType::Float64,
        TensorType::Bf16 => TensorElementType::Bfloat16,
        TensorType::U8 => TensorElementType::Uint8,
        TensorType::I32 => TensorElementType::Int32,
        TensorType::I64 => TensorElementType::Int64,
    }
}

/// The wasi:nn type of an ONNX element type, if wasi:nn can carry it.
pub fn from_ort(ty: TensorElementType) -> Option<TensorType> {
    Some(match ty {
        TensorElementType::Float16 => TensorType::Fp16,
        TensorElementType::Float32 => TensorType::Fp32,
        TensorElementType::Float64 => TensorType::Fp64,
        TensorElementType::Bfloat16 => TensorType::Bf16,
        TensorElementType::Uint8 => TensorType::U8,
        TensorElementType::Int32 => TensorType::I32,
        TensorElementType::Int64 => TensorType::I64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        let t = Tensor {
            dims: vec![2, 3],
            ty: TensorType::Fp32,
            data: vec![0; 24],
        };
        assert!(t.check_size().is_ok());
        let short = Tensor {
            data: vec![0; 20],
            ..t.clone()
        };
        assert!(short.check_size().unwrap_err().contains("need 24"));
        let huge = Tensor {
            dims: vec![u32::MAX, u32::MAX, u32::MAX],
            ty: TensorType::I64,
            data: vec![],
        };
        assert!(huge.check_size().is_err());
        assert_eq!(byte_len(&[], TensorType::U8), Some(1));
        for ty in ALL_TYPES {
            assert_eq!(from_ort(to_ort(ty)), Some(ty));
        }
    }
}
