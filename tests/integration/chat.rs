//! Chat templates through the binary: conversations in a `messages` column, templates saved by
//! `train`, and every way a conversation can fail (exit 2, file, column and row named).

use burn::tensor::DType;
use curate::model::chat::encode_conversation;
use curate::model::{ChatTemplate, LanguageModel, Message, TemplateChoice};
use tokenizers::Tokenizer;

use crate::model::{fixture, load};
use crate::test::Test;

/// Two conversations: one turn, and two turns with a system message.
const CONVERSATIONS: &str = concat!(
    r#"{"id": "a", "messages": [{"role": "user", "content": "What is 12 + 30?"}, "#,
    r#"{"role": "assistant", "content": "12 + 30 = 42.\n#### 42"}]}"#,
    "\n",
    r#"{"id": "b", "messages": [{"role": "system", "content": "Be brief."}, "#,
    r#"{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}, "#,
    r#"{"role": "user", "content": "An even one?"}, {"role": "assistant", "content": "2"}]}"#,
    "\n",
);

/// The conversation renders and tokenises as a reference row says: `text`, `input_ids` and
/// `labels` (made with transformers by the fixture scripts).
pub fn assert_encodes_as(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    expected: &serde_json::Value,
) {
    let (text, sequence) = encode_conversation(tokenizer, template, messages).unwrap();
    let ints = |key: &str| -> Vec<i64> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let id = &expected["id"];
    assert_eq!(text, expected["text"].as_str().unwrap(), "{id}");
    assert_eq!(sequence.input_ids, ints("input_ids"), "{id}");
    assert_eq!(sequence.labels, ints("labels"), "{id}");
}

fn template_of(gguf: &str) -> String {
    load(&fixture(gguf), DType::F32).chat_template.unwrap().text
}

#[test]
fn train_saves_the_chat_template_it_used() {
    let gguf = fixture("gguf/tiny-lm-f32.gguf");
    let mut test = Test::new().file("chat.jsonl", CONVERSATIONS);
    // Fine-tuning a GGUF model on conversations with its own template.
    test.args([
        "train",
        "chat.jsonl",
        "--out",
        "tuned",
        "--steps",
        "2",
        "--model",
    ])
    .arg(&gguf)
    .run()
    .success();
    let template = template_of("gguf/tiny-lm-f32.gguf");
    let saved = String::from_utf8(test.read("tuned/chat_template.jinja")).unwrap();
    assert_eq!(saved, template);
    let config: serde_json::Value =
        serde_json::from_slice(&test.read("tuned/tokenizer_config.json")).unwrap();
    assert_eq!(config["eos_token"], "<|endoftext|>");
    // The saved model renders and tokenises conversations as the GGUF does.
    let (tuned, original) = (
        load(&test.path("tuned"), DType::F32),
        load(&gguf, DType::F32),
    );
    let messages = [
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello"),
    ];
    let encode = |lm: &LanguageModel| {
        let template = lm.chat_template(&TemplateChoice::Auto).unwrap().unwrap();
        encode_conversation(lm.tokenizer.as_ref().unwrap(), &template, &messages).unwrap()
    };
    assert_eq!(encode(&tuned), encode(&original));

    // A fresh model trained with a template file keeps that template.
    std::fs::write(test.path("template.jinja"), &template).unwrap();
    test.args(["train", "chat.jsonl", "--out", "fresh", "--steps", "2"])
        .args(["--vocab-size", "300", "--chat-template", "template.jinja"])
        .run()
        .success();
    let saved = String::from_utf8(test.read("fresh/chat_template.jinja")).unwrap();
    assert_eq!(saved, template);
}

#[test]
fn influence_scores_multi_turn_conversations() {
    let mut test = Test::new().file("chat.jsonl", CONVERSATIONS);
    test.args(["influence", "--model"])
        .arg(fixture("gguf/tiny-lm-f32.gguf"))
        .args(["--train", "chat.jsonl", "--query", "chat.jsonl"])
        .args(["--granularity", "token", "--out", "scores.jsonl"])
        .run()
        .success();
    let tokens = test.read_lines("scores.tokens.jsonl");
    // Only assistant content and the end-of-turn token after it carry loss: "7", "2" and
    // their <|endoftext|> in the second conversation.
    let loss: Vec<String> = tokens
        .iter()
        .filter(|t| t["query_id"] == "a" && t["train_id"] == "b" && t["response"] == true)
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(loss, ["7", "<|endoftext|>", "2", "<|endoftext|>"]);
}

#[test]
fn conversations_that_cannot_be_encoded_are_named() {
    let gguf = fixture("gguf/tiny-lm-f32.gguf").display().to_string();
    let mut test = Test::new()
        .file("chat.jsonl", CONVERSATIONS)
        .file(
            "tool.jsonl",
            concat!(
                r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
                "\n",
                r#"{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
                "\n"
            ),
        )
        .file(
            "silent.jsonl",
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
        )
        .file("strings.jsonl", r#"{"messages": ["hello", "there"]}"#)
        .file(
            "rewrite.jinja",
            "{% for m in messages %}{{ m.role }}: {{ m.content | replace('4', 'four') }}\n{% endfor %}",
        )
        .file("broken.jinja", "{% for m in messages %}");
    let mut fails = |model: &str, train: &str, extra: &[&str], needle: &str| {
        test.args(["influence", "--model", model, "--train", train, "--query"])
            .arg(train)
            .args(["--out", "scores.parquet"])
            .args(extra)
            .run()
            .invalid(needle);
        assert!(!test.path("scores.parquet").exists());
    };
    let tiny = fixture("tiny-lm").display().to_string();
    fails(
        &tiny,
        "chat.jsonl",
        &[],
        "chat.jsonl: column 'messages' holds conversations, which need a chat template",
    );
    fails(
        &gguf,
        "chat.jsonl",
        &["--chat-template", "none", "--system", "x"],
        "--system needs a chat template",
    );
    fails(
        &gguf,
        "tool.jsonl",
        &[],
        "tool.jsonl: column 'messages', row 2: the chat template failed: unknown role: tool",
    );
    fails(
        &gguf,
        "silent.jsonl",
        &[],
        "silent.jsonl: column 'messages', row 1: no assistant message",
    );
    fails(
        &gguf,
        "strings.jsonl",
        &[],
        "strings.jsonl: column 'messages': expected a list of {role, content} messages",
    );
    fails(
        &gguf,
        "chat.jsonl",
        &["--chat-template", "rewrite.jinja"],
        "row 1: the chat template does not write assistant message 2 as given",
    );
    fails(
        &gguf,
        "chat.jsonl",
        &["--chat-template", "broken.jinja"],
        "broken.jinja: the chat template does not compile",
    );
    fails(
        &gguf,
        "chat.jsonl",
        &["--chat-template", "missing.jinja"],
        "--chat-template missing.jinja: cannot read the template",
    );
}
