"""DVC stage `prepare`: the training documents (and, for the people world, its database and its
validation documents: `validation.jsonl`, about people who are never trained;
lmpipe/data/world.py)."""

from pathlib import Path

from lmpipe.core.paths import WORLD
from lmpipe.core.section import ConfigError
from lmpipe.stage import stage


@stage
def prepare(params, argv):
    from lmpipe.core.outputs import staged
    from lmpipe.data.sources import load_corpus, paragraphs, tiny_shakespeare, write_text_documents
    from lmpipe.data.world import write_world

    data = params.data
    if data.source == "people":
        try:
            with staged(WORLD) as out:
                stats = write_world(params.world, out)
        except ValueError as exc:  # no name left for validation, or a split losing facts
            raise ConfigError(f"world: {exc}") from None
        print(f"prepare: {stats['people']} trained + {stats['heldout_people']} held-out people, "
              f"{stats['documents']} training documents, {stats['validation_documents']} "
              f"validation documents (untrained people: {stats['validation_people']}) -> {WORLD}")
        return
    if data.source == "shakespeare":
        texts = paragraphs(tiny_shakespeare(data.path, Path(data.cache_dir)).read_text())
    else:
        texts = load_corpus(data.path, data.format, Path(data.cache_dir), data.field)
    texts = texts[:data.max_documents]
    with staged(WORLD) as out:
        stats = write_text_documents(texts, out, {"source": data.source, "path": data.path})
    print(f"prepare: {stats['documents']} {data.source} documents ({stats['bytes']:,} bytes) -> {WORLD}")


if __name__ == "__main__":
    prepare()
