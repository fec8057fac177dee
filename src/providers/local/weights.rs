//! The model's weight matrices, held in the format the CPU runs fastest.
//!
//! candle picks its quantized dot products at compile time (`#[cfg(target_feature)]`
//! in `candle-core`'s `k_quants.rs`), and not every GGUF type has a SIMD one: Q4_1,
//! the default model's type, has none at all. Dense F16/F32 matrices go through
//! `gemm`, which picks AVX2, FMA or AVX-512 at *run* time. So the default holds
//! the quantized matrices dequantized to F16: the SIMD paths of whatever CPU runs
//! the binary, from a build for baseline x86-64. Measured in benches/README 9.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

/// How the model's matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightFormat {
    /// F16 (the default: run-time SIMD through gemm, half of F32's memory).
    F16,
    /// F32: run-time SIMD through gemm, twice F16's memory.
    F32,
    /// Quantized, exactly as stored in the file (candle's compile-time kernels).
    File,
    /// Quantized as Q8_0 (candle's compile-time kernels).
    // clap would spell it q8-0.
    #[value(name = "q8_0")]
    Q8_0,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::File => "file",
            Self::Q8_0 => "q8_0",
        }
    }
}

/// One weight matrix `(out, in)`, applied as `x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// candle's quantized product.
    Quantized(QMatMul),
    /// A dense matrix (F16 or F32); gemm chooses the SIMD path at run time.
    Dense(Tensor),
}

impl Linear {
    pub fn new(t: QTensor, format: WeightFormat) -> candle_core::Result<Self> {
        let device = t.device();
        let dense = |dtype: DType| -> candle_core::Result<Self> {
            Ok(Self::Dense(t.dequantize(&device)?.to_dtype(dtype)?))
        };
        match (format, t.dtype()) {
            (_, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) | (WeightFormat::F32, _) => {
                dense(DType::F32)
            }
            (WeightFormat::F16, _) => dense(DType::F16),
            (WeightFormat::File, _) | (WeightFormat::Q8_0, GgmlDType::Q8_0) => {
                Ok(Self::Quantized(QMatMul::from_qtensor(t)?))
            }
            (WeightFormat::Q8_0, _) => {
                let q8 = QTensor::quantize(&t.dequantize(&device)?, GgmlDType::Q8_0)?;
                Ok(Self::Quantized(QMatMul::from_qtensor(q8)?))
            }
        }
    }

    /// `x` is `(rows, in)`; the result `(rows, out)`, F32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Quantized(q) => q.forward(x),
            Self::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?),
            Self::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32),
        }
    }
}
