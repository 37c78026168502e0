//! How an evaluation prompt becomes token ids: the LLM-Adapters evaluation prompt encoded as text
//! with the tokenizer's special tokens (the protocol), or — `tsd eval --chat-template`, for
//! Instruct models — that prompt as the one user turn of the model's chat template with the
//! generation prompt, tokenized as transformers' `apply_chat_template(tokenize=True)` does.

use crate::data::{eval_prompt, Example};
use crate::error::Result;
use crate::model::chat_template::{apply_chat_template, ChatTemplate, RenderOptions};
use crate::model::tokenizer::{encode, Tokenizer};

/// A tokenizer with the evaluation prompt's format; derefs to the tokenizer for everything else.
#[derive(Clone)]
pub struct PromptTokenizer {
    tok: Tokenizer,
    chat: Option<ChatTemplate>,
}

impl std::ops::Deref for PromptTokenizer {
    type Target = Tokenizer;
    fn deref(&self) -> &Tokenizer {
        &self.tok
    }
}

impl PromptTokenizer {
    /// The protocol's prompts: LLM-Adapters' text, encoded with special tokens.
    pub fn plain(tok: Tokenizer) -> Self {
        PromptTokenizer { tok, chat: None }
    }

    /// Prompts wrapped in `template` as one user turn.
    pub fn chat(tok: Tokenizer, template: ChatTemplate) -> Self {
        PromptTokenizer {
            tok,
            chat: Some(template),
        }
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The token ids of `ex`'s evaluation prompt.
    pub fn prompt_ids(&self, ex: &Example) -> Result<Vec<u32>> {
        let text = eval_prompt(&ex.instruction, Some(&ex.input));
        let Some(t) = &self.chat else {
            return encode(&self.tok, &text);
        };
        let messages = [serde_json::json!({"role": "user", "content": text})];
        let opts = RenderOptions {
            add_generation_prompt: true,
            tools: None,
        };
        Ok(apply_chat_template(&self.tok, t, &messages, &opts, false)?.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{encode_plain, load_tokenizer};

    /// On the default model (SmolLM2's ChatML template, which adds its default system turn), the
    /// wrapped prompt is the user turn between the template's markers, encoded as text; the plain
    /// prompt is the protocol's encoding.
    #[test]
    fn chat_prompts_are_the_templates_user_turn() {
        let p = crate::provision::default_model(false).expect("default model provisioned");
        let tok = load_tokenizer(&p).unwrap();
        let t = ChatTemplate::load(&p).unwrap().unwrap();
        let ex = Example {
            instruction: "Is water wet?".into(),
            input: String::new(),
            output: String::new(),
            answer: None,
        };
        let prompt = eval_prompt(&ex.instruction, None);
        let want = format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        );
        let chat = PromptTokenizer::chat(tok.clone(), t);
        assert_eq!(
            chat.prompt_ids(&ex).unwrap(),
            encode_plain(&tok, &want).unwrap()
        );
        let plain = PromptTokenizer::plain(tok.clone());
        assert_eq!(
            plain.prompt_ids(&ex).unwrap(),
            encode(&tok, &prompt).unwrap()
        );
        assert!(plain.chat_template().is_none() && chat.chat_template().is_some());
    }
}
