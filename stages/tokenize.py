"""DVC stage `tokenize`: the tokenizer (`tokenize.kind`), token arrays, loss masks, train/val split.

The people world comes split by `prepare` (every document marks its split; lmpipe/data/tokens.py
`world_split` takes val_fraction x trained people of its validation people and checks that no
trained fact is missing from training text); plain corpora are split per document, seeded."""

from lmpipe.core.paths import TOKENIZER, TOKENS, WORLD
from lmpipe.core.section import ConfigError
from lmpipe.stage import stage


@stage
def tokenize(params, argv):
    from lmpipe.core.outputs import staged
    from lmpipe.data.tokenizer_kinds import build_tokenizer
    from lmpipe.data.tokens import tokenize_documents, world_documents
    from lmpipe.model.build import save_tokenizer

    p = params.tokenize
    try:
        docs, splits, rule = world_documents(WORLD, p.val_fraction, p.seed)
    except ValueError as exc:
        raise ConfigError(f"{WORLD}: {exc}") from None
    texts = [d["text"] for d in docs]
    try:
        tokenizer = build_tokenizer(p.kind, texts, vocab_size=p.vocab_size, path=p.path)
    except (ValueError, ImportError, OSError) as exc:  # bad kind/file/vocab: the input's fault
        raise ConfigError(f"tokenize.kind = {p.kind}: {exc}") from None
    with staged(TOKENS) as out:
        save_tokenizer(tokenizer, out / TOKENIZER.relative_to(TOKENS))
        stats = tokenize_documents(texts, tokenizer, out, p.val_fraction, p.loss_on, p.seed,
                                   splits=splits, split_rule=rule)
    n = rule["validation_people"] if rule else stats["val"]["documents"]
    by = f"{n} validation {('person' if n == 1 else 'people') if rule else 'documents'}"
    print(f"tokenize: {p.kind} tokenizer ({len(tokenizer):,} ids), {stats['train']['tokens']} train "
          f"/ {stats['val']['tokens']} val tokens ({by}) -> {TOKENS}")


if __name__ == "__main__":
    tokenize()
