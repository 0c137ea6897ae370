"""DVC stage `validate`: refuse an invalid params.yaml before any other stage runs or DVC deletes
any output.

It depends on the whole params.yaml and every other stage depends on its output, so `dvc repro`
stops here on a bad file, with one line per problem (`lmpipe validate: error: params.yaml:
<key>: <what is wrong>; expected <what>`) and exit status 2, having written nothing. Besides the
parameters themselves it checks what they ask of this machine: input files, local tokenizer
files, lm-eval task names, optional packages (lmpipe/params/environment.py), and what every
stage of the pipeline can run with the models' architectures (lmpipe/params/arch_support.py).

On success it writes `.lmpipe/validated.json` with constant content: a valid change to params.yaml
reruns this stage, and the unchanged output lets DVC rerun only the stages whose own parameters
changed. It imports neither torch nor transformers and answers in well under two seconds.
"""

import json
from pathlib import Path

from lmpipe.core.outputs import write_atomic
from lmpipe.core.paths import PARAMS
from lmpipe.core.section import ConfigError
from lmpipe.params.arch_support import pipeline_problems
from lmpipe.stage import stage

VALIDATED = Path(".lmpipe/validated.json")
CONTENT = json.dumps({"params": str(PARAMS), "valid": True}) + "\n"


@stage(environment=True)
def validate(params, argv):
    if argv:
        raise SystemExit("usage: python -m stages.validate [key.sub=value ...]")
    # every stage of this pipeline runs: refuse now what any of them cannot do with model.arch
    found = pipeline_problems(params)
    if found:
        raise ConfigError("\n".join(problem.line(str(PARAMS)) for problem in found))
    write_atomic(VALIDATED, CONTENT)
    print(f"validate: {PARAMS} is valid -> {VALIDATED}")


if __name__ == "__main__":
    validate()
