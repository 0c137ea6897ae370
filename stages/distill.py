"""DVC stage `distill`: train the student architecture from the teacher (cache or live model)."""

from lmpipe.core.paths import PARAMS, TEACHER_CACHE, TOKENIZER, TOKENS, model_dir, run_dir
from lmpipe.params.arch_support import refuse_unsupported
from lmpipe.stage import stage


@stage(distributed=True)
def main(params, argv):
    refuse_unsupported(params, "distill", str(PARAMS))
    from lmpipe.runs.distillation import distill  # torch: only once the params are valid

    distill(params, TOKENS, TOKENIZER, TEACHER_CACHE, model_dir("teacher"), run_dir("distill"))


if __name__ == "__main__":
    main()
