//! The llama architecture (SmolLM2, Llama, TinyLlama, Qwen-style GGUF files named
//! `llama`) on candle's tensors: what `candle-transformers`' `quantized_llama`
//! does, written here for two reasons measured in benches/README 9:
//! - `candle-transformers` compiles ~200 models to use one: 83 s on the critical
//!   path of a clean release build (a quarter of it);
//! - its causal mask covers only a batch starting at position 0, so a prompt past
//!   the first batch was read one token at a time; here every chunk is masked,
//!   and a long prompt is read in batches with cancellation checked between them.

use super::weights::{Linear, WeightFormat};
use anyhow::{anyhow, bail};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, IndexOp, Tensor};
use std::io::{Read, Seek};

/// candle's rotary tables are built for this many positions at most.
pub const MAX_CONTEXT: usize = 4096;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Keys and values of the positions read so far: `(1, kv_heads, len, head_dim)`.
    cache: Option<(Tensor, Tensor)>,
}

struct Layer {
    attention_norm: Tensor,
    attention: Attention,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A loaded model. `forward` keeps the kv cache: position 0 starts afresh.
pub struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// The model in `ct` (read from `reader`), its matrices held as `format`.
    pub fn load(
        ct: &gguf_file::Content,
        reader: &mut (impl Read + Seek),
        device: &Device,
        format: WeightFormat,
    ) -> anyhow::Result<Self> {
        let meta = |key: &str| {
            ct.metadata
                .get(key)
                .ok_or_else(|| anyhow!("the GGUF metadata lacks {key}"))
        };
        let count = |key: &str| -> anyhow::Result<usize> { Ok(meta(key)?.to_u32()? as usize) };
        let heads = count("llama.attention.head_count")?;
        let kv_heads = count("llama.attention.head_count_kv")?;
        let layers_n = count("llama.block_count")?;
        let width = count("llama.embedding_length")?;
        let eps = meta("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let rope_base = meta("llama.rope.freq_base")
            .and_then(|v| Ok(v.to_f32()?))
            .unwrap_or(10_000.0);
        if heads == 0 || kv_heads == 0 || width % heads != 0 || heads % kv_heads != 0 {
            bail!("unsupported head layout: {heads} heads, {kv_heads} kv heads, width {width}");
        }
        let head_dim = width / heads;
        let mut tensor = |name: &str| ct.tensor(reader, name, device);

        let embedded = tensor("token_embd.weight")?;
        let embeddings = embedded.dequantize(device)?;
        let output = match tensor("output.weight") {
            Ok(t) => Linear::new(t, format)?,
            // Tied embeddings (SmolLM2): the output matrix is the embedding table.
            Err(_) => Linear::new(embedded, format)?,
        };
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(layers_n);
        for i in 0..layers_n {
            let mut linear = |part: &str| -> anyhow::Result<Linear> {
                Ok(Linear::new(
                    tensor(&format!("blk.{i}.{part}.weight"))?,
                    format,
                )?)
            };
            let attention = Attention {
                q: linear("attn_q")?,
                k: linear("attn_k")?,
                v: linear("attn_v")?,
                o: linear("attn_output")?,
                cache: None,
            };
            let (gate, up, down) = (linear("ffn_gate")?, linear("ffn_up")?, linear("ffn_down")?);
            layers.push(Layer {
                attention_norm: tensor(&format!("blk.{i}.attn_norm.weight"))?.dequantize(device)?,
                attention,
                ffn_norm: tensor(&format!("blk.{i}.ffn_norm.weight"))?.dequantize(device)?,
                gate,
                up,
                down,
            });
        }
        let (cos, sin) = rotary_tables(head_dim, rope_base, device)?;
        Ok(Self {
            embeddings,
            layers,
            norm,
            output,
            heads,
            kv_heads,
            head_dim,
            eps,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// Read `tokens` at positions `pos..`, after the cached `0..pos` (position 0
    /// clears the cache); the logits for the token after the last one, `(vocab,)`.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        if n == 0 || pos + n > MAX_CONTEXT {
            candle_core::bail!("{n} tokens at position {pos} do not fit the context");
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?; // (n, width)
        let mask = (n > 1)
            .then(|| causal_mask(n, pos, &self.device))
            .transpose()?;
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let shape = Shape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        };
        for layer in &mut self.layers {
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, self.eps)?;
            let h = layer
                .attention
                .forward(&h, pos, &cos, &sin, mask.as_ref(), shape)?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let h = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&h)?)?;
        }
        let last = x.i(n - 1..n)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last)?.squeeze(0)
    }
}

#[derive(Clone, Copy)]
struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(
        &mut self,
        x: &Tensor,
        pos: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        s: Shape,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        // (n, heads * head_dim) -> (1, heads, n, head_dim)
        let split = |t: Tensor, heads: usize| {
            t.reshape((1, n, heads, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?, s.heads)?;
        let k = split(self.k.forward(x)?, s.kv_heads)?;
        let v = split(self.v.forward(x)?, s.kv_heads)?;
        // GGUF stores q and k permuted for the interleaved rotation.
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?;
        let (k, v) = match (&self.cache, pos) {
            (Some((ck, cv)), p) if p > 0 => {
                (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?)
            }
            _ => (k, v),
        };
        self.cache = Some((k.clone(), v.clone()));
        let repeat = s.heads / s.kv_heads;
        let (k, v) = (repeat_kv(k, repeat)?, repeat_kv(v, repeat)?);
        let scores = (q.matmul(&k.t()?)? / (s.head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&v)?; // (1, heads, n, head_dim)
        let y = y.transpose(1, 2)?.reshape((n, s.heads * s.head_dim))?;
        self.o.forward(&y)
    }
}

/// Each of `kv_heads` key/value heads serves `repeat` query heads (grouped-query
/// attention): `(1, kv, len, d)` -> `(1, kv * repeat, len, d)`.
fn repeat_kv(t: Tensor, repeat: usize) -> candle_core::Result<Tensor> {
    if repeat == 1 {
        return Ok(t);
    }
    let (b, kv, len, d) = t.dims4()?;
    t.unsqueeze(2)?
        .expand((b, kv, repeat, len, d))?
        .reshape((b, kv * repeat, len, d))
}

/// `(n, pos + n)`: 0 where query `i` (at position `pos + i`) may see key `j`,
/// -inf where `j` is in its future.
fn causal_mask(n: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let keys = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..keys).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, keys), device)
}

/// cos and sin of every position's rotation angles, `(MAX_CONTEXT, head_dim / 2)`.
fn rotary_tables(
    head_dim: usize,
    base: f32,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inverse: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let inverse = Tensor::new(inverse.as_slice(), device)?.unsqueeze(0)?;
    let positions = Tensor::arange(0u32, MAX_CONTEXT as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let angles = positions.matmul(&inverse)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_after_the_cache_sees_the_cache_and_its_own_past() {
        let m = causal_mask(2, 3, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = m.to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows[0], vec![0.0, 0.0, 0.0, 0.0, inf]);
        assert_eq!(rows[1], vec![0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn kv_heads_repeat_in_order() {
        let t = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 1))
            .unwrap();
        let r: Vec<f32> = repeat_kv(t, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(r, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}
