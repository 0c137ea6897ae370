"""The data: the people world, corpora, the database tool, tokenizers, token arrays, batches and
attention masks."""
