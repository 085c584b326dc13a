//! Tensor elements between the protocol's encodings and the node's row-major little-endian
//! bytes: the datatype names, JSON `data` (flat or nested arrays of numbers) and the two 16-bit
//! float formats JSON carries as numbers. Pure functions; every count and range is checked.

use serde::Serialize;
use serde::ser::SerializeSeq;
use serde_json::Value;

use crate::nn::bindings::wasi::nn::tensor::TensorType;
use crate::nn::tensor::{ALL_TYPES, MAX_TENSOR_BYTES, element_size};

/// The protocol's name of an element type.
pub fn datatype(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "FP16",
        TensorType::Fp32 => "FP32",
        TensorType::Fp64 => "FP64",
        TensorType::Bf16 => "BF16",
        TensorType::U8 => "UINT8",
        TensorType::I32 => "INT32",
        TensorType::I64 => "INT64",
    }
}

/// The element type a protocol datatype names, or a message listing the ones this node runs.
pub fn parse_datatype(name: &str) -> Result<TensorType, String> {
    ALL_TYPES
        .into_iter()
        .find(|ty| datatype(*ty) == name)
        .ok_or_else(|| {
            let known: Vec<&str> = ALL_TYPES.into_iter().map(datatype).collect();
            format!(
                "datatype `{}` is not one this node runs: use one of {known:?}",
                name.escape_default()
            )
        })
}

/// A protocol shape (non-negative dimensions) as the node's dimensions.
pub fn dims(shape: &[i64]) -> Result<Vec<u32>, String> {
    shape
        .iter()
        .map(|d| {
            u32::try_from(*d).map_err(|_| {
                format!("shape {shape:?} has a dimension that is negative or too large")
            })
        })
        .collect()
}

/// The number of elements of `dims`, if the tensor stays within the node's tensor limit.
pub fn element_count(dims: &[u32], ty: TensorType) -> Result<usize, String> {
    crate::nn::tensor::byte_len(dims, ty)
        .filter(|bytes| *bytes <= MAX_TENSOR_BYTES)
        .map(|bytes| bytes / element_size(ty))
        .ok_or_else(|| {
            format!("shape {dims:?} is over the node's tensor limit of {MAX_TENSOR_BYTES} bytes")
        })
}

/// An input's declared element type, dimensions and element count, checked: a datatype this
/// node runs, non-negative dimensions, within the tensor limit.
pub fn declared(datatype: &str, shape: &[i64]) -> Result<(TensorType, Vec<u32>, usize), String> {
    let ty = parse_datatype(datatype)?;
    let dims = dims(shape)?;
    let count = element_count(&dims, ty)?;
    Ok((ty, dims, count))
}

/// The bytes of JSON `data` (a flat or nested array of numbers, row-major) for `count` elements
/// of `ty`.
pub fn from_json(ty: TensorType, count: usize, data: &Value) -> Result<Vec<u8>, String> {
    let mut flat = Vec::with_capacity(count.min(1 << 20));
    flatten(data, &mut flat, count)?;
    if flat.len() != count {
        return Err(format!(
            "`data` has {} elements but the shape needs {count}",
            flat.len()
        ));
    }
    let mut out = Vec::with_capacity(count * element_size(ty));
    for (i, v) in flat.into_iter().enumerate() {
        push(ty, v, &mut out).map_err(|why| format!("element {i} of `data`: {why}"))?;
    }
    Ok(out)
}

/// Collects the leaves of nested arrays, stopping as soon as there are more than `limit`.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> Result<(), String> {
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, limit)?;
            }
            Ok(())
        }
        leaf => {
            if out.len() == limit {
                return Err(format!("`data` has more elements than the shape's {limit}"));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

fn push(ty: TensorType, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let number = || v.as_f64().ok_or_else(|| format!("`{v}` is not a number"));
    let integer = || {
        v.as_i64()
            .ok_or_else(|| format!("`{v}` is not an integer of {}", datatype(ty)))
    };
    let small = |lo: i64, hi: i64| {
        integer().and_then(|n| {
            (lo..=hi)
                .contains(&n)
                .then_some(n)
                .ok_or_else(|| format!("{n} is out of range for {}", datatype(ty)))
        })
    };
    match ty {
        TensorType::Fp32 => out.extend_from_slice(&(number()? as f32).to_le_bytes()),
        TensorType::Fp64 => out.extend_from_slice(&number()?.to_le_bytes()),
        TensorType::Fp16 => out.extend_from_slice(&f32_to_f16(number()? as f32).to_le_bytes()),
        TensorType::Bf16 => out.extend_from_slice(&f32_to_bf16(number()? as f32).to_le_bytes()),
        TensorType::U8 => out.push(small(0, 255)? as u8),
        TensorType::I32 => {
            let n = small(i32::MIN.into(), i32::MAX.into())? as i32;
            out.extend_from_slice(&n.to_le_bytes())
        }
        TensorType::I64 => out.extend_from_slice(&integer()?.to_le_bytes()),
    }
    Ok(())
}

/// A tensor's bytes as a flat JSON array, each element in its own type's shortest form.
pub struct JsonData<'a> {
    /// Element type.
    pub ty: TensorType,
    /// Row-major little-endian bytes, a whole number of elements.
    pub bytes: &'a [u8],
}

impl Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let size = element_size(self.ty);
        let mut seq = s.serialize_seq(Some(self.bytes.len() / size))?;
        for e in self.bytes.chunks_exact(size) {
            match self.ty {
                TensorType::Fp32 => seq.serialize_element(&f32::from_le_bytes(arr(e)))?,
                TensorType::Fp64 => seq.serialize_element(&f64::from_le_bytes(arr(e)))?,
                TensorType::Fp16 => {
                    seq.serialize_element(&f16_to_f32(u16::from_le_bytes(arr(e))))?
                }
                TensorType::Bf16 => {
                    seq.serialize_element(&bf16_to_f32(u16::from_le_bytes(arr(e))))?
                }
                TensorType::U8 => seq.serialize_element(&e[0])?,
                TensorType::I32 => seq.serialize_element(&i32::from_le_bytes(arr(e)))?,
                TensorType::I64 => seq.serialize_element(&i64::from_le_bytes(arr(e)))?,
            }
        }
        seq.end()
    }
}

/// The first `N` bytes of `e` (always exactly `N` here: `chunks_exact` of the element size).
fn arr<const N: usize>(e: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&e[..N]);
    a
}

/// IEEE half precision, rounded to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // The bits that stay (exponent and mantissa, or a subnormal's shifted mantissa with its
    // implicit bit) and how many are rounded away.
    let (mut r, value, shift) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        let value = man | 0x80_0000;
        let shift = (14 - e) as u32;
        (value >> shift, value, shift)
    } else {
        (((e as u32) << 10) | (man >> 13), man, 13)
    };
    let half = 1u32 << (shift - 1);
    let rest = value & ((1 << shift) - 1);
    if rest > half || (rest == half && r & 1 == 1) {
        // A carry out of the mantissa moves the exponent up, to infinity at the top.
        r += 1;
    }
    sign | r as u16
}

/// A half as a float (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            let (mut e, mut m) = (113u32, man);
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16, rounded to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0 | ((x.to_bits() >> 16) as u16 & 0x8000);
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// A bfloat16 as a float (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn datatypes_round_trip_and_unknown_ones_are_named() {
        for ty in ALL_TYPES {
            assert_eq!(parse_datatype(datatype(ty)), Ok(ty));
        }
        let e = parse_datatype("BYTES").unwrap_err();
        assert!(e.contains("`BYTES`") && e.contains("FP32"), "{e}");
        assert!(dims(&[2, -1]).is_err());
        assert_eq!(dims(&[2, 3]), Ok(vec![2, 3]));
        assert!(element_count(&[u32::MAX, u32::MAX], TensorType::Fp32).is_err());
        assert_eq!(element_count(&[2, 3], TensorType::I64), Ok(6));
    }

    #[test]
    fn json_data_flat_or_nested_becomes_bytes_and_back() {
        let nested = from_json(TensorType::Fp32, 4, &json!([[1, 2.5], [-3, 4]])).unwrap();
        let flat = from_json(TensorType::Fp32, 4, &json!([1, 2.5, -3, 4])).unwrap();
        assert_eq!(nested, flat);
        let back = serde_json::to_string(&JsonData {
            ty: TensorType::Fp32,
            bytes: &flat,
        })
        .unwrap();
        assert_eq!(back, "[1.0,2.5,-3.0,4.0]");
        let i64s = from_json(TensorType::I64, 2, &json!([i64::MIN, i64::MAX])).unwrap();
        let back = serde_json::to_value(JsonData {
            ty: TensorType::I64,
            bytes: &i64s,
        })
        .unwrap();
        assert_eq!(back, json!([i64::MIN, i64::MAX]));
        let u8s = from_json(TensorType::U8, 2, &json!([0, 255])).unwrap();
        assert_eq!(u8s, vec![0, 255]);
    }

    #[test]
    fn bad_json_data_is_refused_with_where() {
        let e = |ty, count, v| from_json(ty, count, &v).unwrap_err();
        assert!(e(TensorType::Fp32, 3, json!([1, 2])).contains("2 elements"));
        assert!(e(TensorType::Fp32, 1, json!([1, 2])).contains("more elements"));
        assert!(e(TensorType::U8, 1, json!([256])).contains("out of range"));
        assert!(e(TensorType::I32, 1, json!([1.5])).contains("not an integer"));
        assert!(e(TensorType::Fp32, 2, json!([1, "x"])).contains("element 1"));
        assert!(e(TensorType::I32, 1, json!([3_000_000_000u64])).contains("out of range"));
    }

    #[test]
    fn halves_round_to_nearest_even_and_are_exact_back() {
        for (x, h) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),
            (f32::INFINITY, 0x7c00),
            (5.960_464_5e-8, 0x0001),
            (6.097_555e-5, 0x03ff),
            (6.103_515_6e-5, 0x0400),
            (0.333_333_34, 0x3555),
            (1.000_488_3, 0x3c00),
            (1.001_464_8, 0x3c02),
        ] {
            assert_eq!(f32_to_f16(x), h, "{x}");
        }
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        for h in (0..=u16::MAX).filter(|h| (h >> 10) & 0x1f != 0x1f) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // Halfway between two bfloat16s: to the even one, down here and up there.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }
}
