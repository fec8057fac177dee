//! The tokenizer, rebuilt from a GGUF file's own metadata (no tokenizer.json
//! needed), and the ChatML prompt format.
//!
//! GGUF `gpt2` tokenizers are byte-level BPE: `tokenizer.ggml.tokens` (id = index),
//! `tokenizer.ggml.merges` ("a b" pairs, in priority order) and
//! `tokenizer.ggml.token_type` (3 = control, 4 = user-defined: both special).

use anyhow::{anyhow, bail, Context};
use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
/// SmolLM2's chat template puts this system message in when there is none.
pub const DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// One message of a conversation.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The ChatML prompt for a system message and one user prompt, ending with the
/// assistant's header so the model answers next.
pub fn chatml(system: Option<&str>, prompt: &str) -> String {
    chatml_turns(
        system,
        &[Turn {
            role: "user",
            content: prompt,
        }],
    )
}

/// The ChatML prompt for a conversation (user / assistant turns after the system
/// message), ending with the assistant's header.
pub fn chatml_turns(system: Option<&str>, turns: &[Turn<'_>]) -> String {
    let mut s = String::new();
    let system = Turn {
        role: "system",
        content: system.unwrap_or(DEFAULT_SYSTEM),
    };
    for t in std::iter::once(&system).chain(turns) {
        s.push_str(&format!("{IM_START}{}\n{}{IM_END}\n", t.role, t.content));
    }
    s.push_str(&format!("{IM_START}assistant\n"));
    s
}

/// A chat prompt as token ids, in three parts so that the last user message
/// (`body`) can be cut from the left when the whole does not fit the context.
#[derive(Debug, Clone, Default)]
pub struct ChatTokens {
    /// Everything up to and including the last user message's header.
    pub head: Vec<u32>,
    /// The last user message's content.
    pub body: Vec<u32>,
    /// Its end marker and the assistant's header (and any prefill).
    pub tail: Vec<u32>,
}

impl ChatTokens {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn concat(&self) -> Vec<u32> {
        [&self.head[..], &self.body, &self.tail].concat()
    }
}

/// A byte-level BPE tokenizer with the ChatML markers as special tokens.
pub struct ChatTokenizer {
    tok: Tokenizer,
    pub im_start: u32,
    pub im_end: u32,
    /// Ids that end an answer: `<|im_end|>`, the eos token, and any other marker
    /// that would only start a new turn.
    pub stop: Vec<u32>,
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> anyhow::Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| anyhow!("the GGUF file has no {key}"))
}

impl ChatTokenizer {
    /// Build the tokenizer from the GGUF metadata.
    pub fn from_gguf(ct: &gguf_file::Content) -> anyhow::Result<Self> {
        let model = md(ct, "tokenizer.ggml.model")?.to_string()?;
        if model != "gpt2" {
            bail!(
                "tokenizer.ggml.model is {model:?}: only byte-level BPE (\"gpt2\") GGUF tokenizers are supported"
            );
        }
        let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .context("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges")?
            .to_vec()?
            .iter()
            .map(|v| {
                let m = v.to_string()?;
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| candle_core::Error::Msg(format!("bad merge {m:?}")))
            })
            .collect::<Result<_, _>>()
            .context("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<Result<_, _>>()
                .context("tokenizer.ggml.token_type")?,
            None => Vec::new(),
        };
        let id_of = |key: &str| ct.metadata.get(key).and_then(|v| v.to_u32().ok());
        let eos = id_of("tokenizer.ggml.eos_token_id");

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("cannot build the BPE model: {e}"))?;
        let mut tok = Tokenizer::new(bpe);
        // `smollm` / `gpt2` pre-tokenization: digits one by one, then GPT-2's regex.
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));

        // Control (3) and user-defined (4) tokens are special: never split, skipped
        // when decoding.
        let mut special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        for marker in [IM_START, IM_END] {
            if !special.iter().any(|t| t.content == marker) {
                special.push(AddedToken::from(marker, true));
            }
        }
        tok.add_special_tokens(special)
            .map_err(|e| anyhow!("cannot add the special tokens: {e}"))?;
        // Text is always text: markers in a prompt cannot forge a turn, since
        // the ChatML structure is assembled from ids (see `encode_chat`).
        tok.set_encode_special_tokens(true);

        let im_start = tok
            .token_to_id(IM_START)
            .ok_or_else(|| anyhow!("the vocabulary has no {IM_START}"))?;
        let im_end = tok
            .token_to_id(IM_END)
            .ok_or_else(|| anyhow!("the vocabulary has no {IM_END}"))?;
        let mut stop = vec![im_end, im_start];
        stop.extend(eos);
        stop.extend(tok.token_to_id("<|endoftext|>"));
        stop.sort_unstable();
        stop.dedup();
        Ok(Self {
            tok,
            im_start,
            im_end,
            stop,
        })
    }

    /// Plain text to ids; markers in the text are encoded as ordinary text.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tok
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Ids to text, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| anyhow!("detokenize: {e}"))
    }

    /// Ids to text, special tokens included (for tests and diagnostics).
    pub fn decode_with_special(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| anyhow!("detokenize: {e}"))
    }

    /// The token ids of `chatml_turns(system, turns)` followed by `prefill`
    /// (the start of the assistant's answer), split for truncation.
    pub fn encode_chat(
        &self,
        system: Option<&str>,
        turns: &[Turn<'_>],
        prefill: &str,
    ) -> anyhow::Result<ChatTokens> {
        let system = Turn {
            role: "system",
            content: system.unwrap_or(DEFAULT_SYSTEM),
        };
        let all: Vec<&Turn<'_>> = std::iter::once(&system).chain(turns).collect();
        let mut out = ChatTokens::default();
        let newline = self.encode("\n")?;
        for (i, t) in all.iter().enumerate() {
            let last = i + 1 == all.len();
            out.head.push(self.im_start);
            out.head.extend(self.encode(&format!("{}\n", t.role))?);
            let content = self.encode(t.content)?;
            if last {
                out.body = content;
                out.tail.push(self.im_end);
                out.tail.extend(&newline);
            } else {
                out.head.extend(content);
                out.head.push(self.im_end);
                out.head.extend(&newline);
            }
        }
        out.tail.push(self.im_start);
        out.tail.extend(self.encode("assistant\n")?);
        if !prefill.is_empty() {
            out.tail.extend(self.encode(prefill)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_has_system_user_and_the_assistant_header() {
        assert_eq!(
            chatml(Some("Be brief."), "Name a bee."),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a bee.<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_without_system_uses_the_models_default() {
        let p = chatml(None, "Hi");
        assert!(p.starts_with(&format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")));
        assert!(p.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn chatml_turns_keep_their_order() {
        let p = chatml_turns(
            Some("S"),
            &[
                Turn {
                    role: "user",
                    content: "Q1",
                },
                Turn {
                    role: "assistant",
                    content: "A1",
                },
                Turn {
                    role: "user",
                    content: "Q2",
                },
            ],
        );
        assert_eq!(
            p,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
