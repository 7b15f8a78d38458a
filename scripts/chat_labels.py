"""The assistant-only loss of a chat row, computed with transformers (for reference fixtures).

The rule curate implements in Rust, written independently here:
1. text = apply_chat_template(messages), tokenised whole with no special tokens added;
2. each assistant message's span starts where its content appears in the text, searched from
   the end of the conversation before it rendered with the generation prompt (when the text
   starts with that rendering) and after the previous span; content the template trims is
   searched trimmed;
3. a special token written right after the content (an end-of-turn token) joins the span;
4. a token carries loss when its character span overlaps an assistant span.
"""


def chat_labels(tok, messages, **template_kwargs):
    text = tok.apply_chat_template(messages, tokenize=False, **template_kwargs)
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    specials = sorted(
        (t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values() if t.special),
        key=len,
        reverse=True,
    )
    spans = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_from = cursor
        if index > 0:
            prefix = tok.apply_chat_template(
                messages[:index], tokenize=False, add_generation_prompt=True, **template_kwargs
            )
            if text.startswith(prefix):
                start_from = max(cursor, len(prefix))
        content = message["content"]
        at = text.find(content, start_from) if content else -1
        if at < 0:
            content = content.strip()
            at = text.find(content, start_from) if content else -1
        if at < 0:
            raise ValueError(f"assistant message {index} is not in the rendered text")
        end = at + len(content)
        for special in specials:
            if text.startswith(special, end):
                end += len(special)
                break
        spans.append((at, end))
        cursor = end
    ids = list(encoded["input_ids"])
    labels = [
        token if any(a < e and b > s for s, e in spans) else -100
        for token, (a, b) in zip(ids, encoded["offset_mapping"])
    ]
    return text, ids, labels
