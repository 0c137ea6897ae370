"""DVC stage `train@<name>`: train a model from scratch (`teacher` or `student` section)."""

from lmpipe.core.paths import TOKENIZER, TOKENS, run_dir
from lmpipe.stage import stage


@stage(distributed=True)
def train(params, argv):
    if len(argv) != 1 or argv[0] not in ("teacher", "student"):
        raise SystemExit("usage: python -m stages.train teacher|student")
    from lmpipe.runs.training import train_from_scratch  # torch: only once the params are valid

    name = argv[0]
    train_from_scratch(name, params, TOKENS, TOKENIZER, run_dir(name))


if __name__ == "__main__":
    train()
