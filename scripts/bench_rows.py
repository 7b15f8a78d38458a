"""Token rows both tools read in the side-by-side benchmarks (bench-influence, bench-eval).

Usage: bench_rows.py MODEL TRAIN_ROWS QUERY_ROWS MAX_LEN OUT_DIR [fill]
Writes OUT_DIR/train.jsonl (rows of the bundled math + code mix, domains alternating) and
OUT_DIR/query.jsonl (the bundled queries) with `id`, `input_ids` and `labels`: prompt +
response + end-of-text for a model directory, or the model's chat template for a GGUF file
(loss on the assistant message, chat_labels.py), cut to MAX_LEN, in length order; and
OUT_DIR/train_text.jsonl, the same training rows as `id`, `prompt` and `response` for a tool
that renders them itself. With `fill`, the training rows are the first TRAIN_ROWS whose
rendering fills MAX_LEN, so every batch of them is full whatever its rows.
"""
import json, os, sys
import pyarrow.parquet as pq
model, n_train, n_query, max_len, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
fill = sys.argv[6:] == ["fill"]
if model.endswith(".gguf"):
    sys.path.insert(0, "scripts")
    from chat_labels import chat_labels
    from transformers import AutoTokenizer
    directory, name = os.path.split(os.path.abspath(model))
    chat = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    def encode(prompt, response):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        _, ids, labels = chat_labels(chat, messages)
        return ids[:max_len], labels[:max_len]
else:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{model}/tokenizer.json")
    eos = json.load(open(f"{model}/config.json"))["eos_token_id"]
    def encode(prompt, response):
        p = tok.encode(prompt, add_special_tokens=False).ids
        r = tok.encode(response, add_special_tokens=False).ids + [eos]
        ids = (p + r)[:max_len]
        labels = ([-100] * len(p) + r)[:max_len]
        return ids, labels
mix = pq.read_table("fixtures/math_code_mix.parquet").to_pylist()
# Alternate math and code rows so both domains are in the set.
math = [r for r in mix if r["domain"] == "math"]; code = [r for r in mix if r["domain"] == "code"]
alternating = [x for pair in zip(math, code) for x in pair]
queries = [json.loads(l) for l in open("fixtures/math_code_queries.jsonl")][:n_query]
texts = {}
for name, table, limit, full in (("train", alternating if fill else alternating[:n_train], n_train, fill),
                                 ("query", queries, n_query, False)):
    out = []
    for r in table:
        ids, labels = encode(r["prompt"], r["response"])
        if full and len(ids) < max_len:
            continue
        if any(l != -100 for l in labels[1:]):
            out.append({"id": r["id"], "input_ids": ids, "labels": labels})
            texts[r["id"]] = {"id": r["id"], "prompt": r["prompt"], "response": r["response"]}
        if len(out) == limit:
            break
    if full and len(out) < limit:
        sys.exit(f"only {len(out)} rows of the mix fill {max_len} tokens; ask for fewer")
    out.sort(key=lambda r: len(r["input_ids"]))
    with open(f"{work}/{name}.jsonl", "w") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    if name == "train":
        with open(f"{work}/train_text.jsonl", "w") as f:
            for r in out:
                f.write(json.dumps(texts[r["id"]]) + "\n")
    print(f"{name}: {len(out)} rows, {sum(len(r['input_ids']) for r in out)} tokens, "
          f"{sum(sum(l != -100 for l in r['labels'][1:]) for r in out)} loss-carrying")
