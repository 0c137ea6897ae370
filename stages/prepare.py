"""DVC stage `prepare`: the training documents (and, for the people world, its database)."""

from pathlib import Path

from lmpipe.entry import stage
from lmpipe.paths import WORLD
from lmpipe.sources import load_corpus, paragraphs, tiny_shakespeare, write_text_documents
from lmpipe.world import write_world


@stage
def prepare(params, argv):
    data = params.data
    if data.source == "people":
        stats = write_world(params.world, WORLD)
        print(f"prepare: {stats['people']} trained + {stats['heldout_people']} held-out people, "
              f"{stats['documents']} documents -> {WORLD}")
        return
    if data.source == "shakespeare":
        texts = paragraphs(tiny_shakespeare(data.path, Path(data.cache_dir)).read_text())
    else:
        texts = load_corpus(data.path, data.format, Path(data.cache_dir), data.field)
    texts = texts[:data.max_documents]
    stats = write_text_documents(texts, WORLD, {"source": data.source, "path": data.path})
    print(f"prepare: {stats['documents']} {data.source} documents ({stats['bytes']:,} bytes) -> {WORLD}")


if __name__ == "__main__":
    prepare()
