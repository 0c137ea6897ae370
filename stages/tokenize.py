"""DVC stage `tokenize`: byte-level tokens, loss masks and the train/val split."""

import json

from lmpipe.entry import stage
from lmpipe.paths import TOKENIZER, TOKENS, WORLD
from lmpipe.tokenizer import build_byte_tokenizer
from lmpipe.tokens import tokenize_documents


@stage
def tokenize(params, argv):
    source = WORLD / "documents.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: missing input (run the prepare stage first)")
    texts = [json.loads(line)["text"] for line in source.open(encoding="utf-8")]
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(TOKENIZER)
    p = params.tokenize
    stats = tokenize_documents(texts, tokenizer, TOKENS, p.val_fraction, p.loss_on, p.seed)
    print(f"tokenize: {stats['train']['tokens']} train / {stats['val']['tokens']} val tokens -> {TOKENS}")


if __name__ == "__main__":
    tokenize()
