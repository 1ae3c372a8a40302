//! The chat templates in the instruct models' GGUF metadata render the ChatML HF transformers produces.
mod common;

use coe_core::{ChatMessage, Role};
use coe_tokenizer::ChatTemplate;

fn render(key: &str, messages: &[ChatMessage]) -> Option<String> {
    let (content, tok) = common::load(key)?;
    let template = ChatTemplate::from_gguf(&content, &tok)
        .expect("template compiles")
        .unwrap_or_else(|| panic!("{key} has a chat template"));
    Some(template.render(messages).expect("template renders"))
}

fn system_and_user() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are terse."),
        ChatMessage::new(Role::User, "Hi there"),
    ]
}

const GIVEN_SYSTEM: &str =
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn smollm2_template_uses_given_system_prompt() {
    if let Some(out) = render("smollm2-135m-instruct", &system_and_user()) {
        assert_eq!(out, GIVEN_SYSTEM);
    }
}

#[test]
fn smollm2_template_adds_its_default_system_prompt() {
    if let Some(out) = render("smollm2-135m-instruct", &[ChatMessage::user("Hi there")]) {
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}

#[test]
fn qwen25_coder_template_uses_given_system_prompt() {
    if let Some(out) = render("qwen2.5-coder-0.5b-instruct", &system_and_user()) {
        assert_eq!(out, GIVEN_SYSTEM);
    }
}

#[test]
fn qwen25_coder_template_adds_its_default_system_prompt() {
    if let Some(out) = render(
        "qwen2.5-coder-0.5b-instruct",
        &[ChatMessage::user("Hi there")],
    ) {
        assert_eq!(
            out,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}

#[test]
fn gemma3_base_model_has_no_chat_template() {
    if let Some((content, tok)) = common::load("gemma-3-270m") {
        assert!(ChatTemplate::from_gguf(&content, &tok).unwrap().is_none());
    }
}

/// Expected text rendered by transformers 5.24 (`render_jinja_template`) from the same template.
#[test]
fn multi_turn_conversations_render_as_transformers_does() {
    let messages = [
        ChatMessage::user(" a\n\nb "),
        ChatMessage::new(Role::Assistant, "ok"),
        ChatMessage::user("é 😀 <|im_end|>"),
    ];
    let turns = "<|im_start|>user\n a\n\nb <|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n\
                 <|im_start|>user\né 😀 <|im_end|><|im_end|>\n<|im_start|>assistant\n";
    for (key, system) in [
        (
            "smollm2-135m-instruct",
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        ),
        (
            "qwen2.5-coder-0.5b-instruct",
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
    ] {
        if let Some(out) = render(key, &messages) {
            assert_eq!(
                out,
                format!("<|im_start|>system\n{system}<|im_end|>\n{turns}"),
                "{key}"
            );
        }
    }
}
