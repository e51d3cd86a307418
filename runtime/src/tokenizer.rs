//! Tokenization through the `tokenizers` crate, from a `tokenizer.json` or rebuilt from a GGUF
//! vocabulary, and chat-template rendering.

use qrt_format::checkpoint::GgufVocab;
use serde_json::{json, Map, Value};

use crate::RuntimeError;

/// The Llama-3 pre-tokenizer pattern (`tokenizer.ggml.pre = llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 pre-tokenizer pattern (`tokenizer.ggml.pre = qwen2`).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// A tokenizer and the special tokens generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a tokenizer from `tokenizer.json` text.
    pub fn from_json(json: &str) -> Result<Self, RuntimeError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| RuntimeError::Tokenizer(format!("cannot load tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Encodes `text`, adding the special tokens the tokenizer's post-processor asks for
    /// (e.g. BOS), and parsing special tokens written in the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        self.encode_with(text, true)
    }

    /// Encodes `text`, with or without the post-processor's special tokens.
    pub fn encode_with(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| RuntimeError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes `ids`, dropping special tokens when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, RuntimeError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| RuntimeError::Tokenizer(format!("cannot decode tokens: {e}")))
    }

    /// The id of a token written out, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Builds `tokenizer.json` text equivalent to a GGUF byte-level BPE vocabulary
/// (`tokenizer.ggml.model = gpt2`), choosing the pre-tokenizer from `tokenizer.ggml.pre`.
pub fn tokenizer_json_from_gguf(v: &GgufVocab) -> Result<String, RuntimeError> {
    if v.model != "gpt2" {
        return Err(RuntimeError::Tokenizer(format!(
            "GGUF tokenizer model '{}' is not supported (only byte-level BPE, 'gpt2'); \
             convert from the Hugging Face checkpoint with its tokenizer.json instead",
            v.model
        )));
    }
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let pre = v.pre.as_deref().unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = match pre {
        "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
            false,
        ),
        other => {
            return Err(RuntimeError::Tokenizer(format!(
                "GGUF pre-tokenizer '{other}' is not supported (known: gpt-2, smollm, starcoder, llama-bpe, qwen2)"
            )))
        }
    };
    let mut vocab = Map::with_capacity(v.tokens.len());
    let mut added = Vec::new();
    for (id, token) in v.tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
        let ty = v.token_types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty != TOKEN_CONTROL, "special": ty == TOKEN_CONTROL,
            }));
        }
    }
    let post_processor = match (v.add_bos, v.bos) {
        (true, Some(bos)) => {
            let bos_text = v.tokens.get(bos as usize).cloned().ok_or_else(|| {
                RuntimeError::Tokenizer(format!("BOS id {bos} is outside the vocabulary"))
            })?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_text.clone(): {"id": bos_text, "ids": [bos], "tokens": [bos_text]}},
            })
        }
        _ => Value::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": v.merges,
        },
    });
    let text =
        serde_json::to_string(&tokenizer).map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
    Tokenizer::from_json(&text)?;
    Ok(text)
}

/// One chat message.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The ChatML template, used when a model carries no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Renders a Jinja chat template as transformers' `apply_chat_template(...,
/// add_generation_prompt=True)` does.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, RuntimeError> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| RuntimeError::Tokenizer(format!("chat template does not parse: {e}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| RuntimeError::Tokenizer(format!("chat template failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_like_transformers() {
        let messages = vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ];
        let text = render_chat(CHATML_TEMPLATE, &messages, "", "").unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_broken_template_is_an_error() {
        assert!(render_chat("{% for %}", &[], "", "").is_err());
    }
}
