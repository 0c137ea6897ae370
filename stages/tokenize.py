"""DVC stage `tokenize`: the tokenizer (`tokenize.kind`), token arrays, loss masks, train/val split."""

import json

from lmpipe.config import ConfigError
from lmpipe.entry import stage
from lmpipe.paths import TOKENIZER, TOKENS, WORLD


@stage
def tokenize(params, argv):
    from lmpipe.model import save_tokenizer
    from lmpipe.outputs import staged
    from lmpipe.tokenizer_kinds import build_tokenizer
    from lmpipe.tokens import tokenize_documents

    source = WORLD / "documents.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: missing input (run the prepare stage first)")
    texts = [json.loads(line)["text"] for line in source.open(encoding="utf-8")]
    p = params.tokenize
    try:
        tokenizer = build_tokenizer(p.kind, texts, vocab_size=p.vocab_size, path=p.path)
    except (ValueError, ImportError, OSError) as exc:  # bad kind/file/vocab: the input's fault
        raise ConfigError(f"tokenize.kind = {p.kind}: {exc}") from None
    with staged(TOKENS) as out:
        save_tokenizer(tokenizer, out / TOKENIZER.relative_to(TOKENS))
        stats = tokenize_documents(texts, tokenizer, out, p.val_fraction, p.loss_on, p.seed)
    print(f"tokenize: {p.kind} tokenizer ({len(tokenizer):,} ids), {stats['train']['tokens']} train "
          f"/ {stats['val']['tokens']} val tokens -> {TOKENS}")


if __name__ == "__main__":
    tokenize()
