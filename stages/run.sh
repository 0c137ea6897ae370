# Run one DVC stage with the project's Python: `sh stages/run.sh NAME [ARGS...]` runs
# `python -m stages.NAME ARGS...`. DVC runs stage commands with the PATH of whoever started it,
# and `.venv/bin/dvc repro` or `dvc exp run` from an unactivated venv would find no `python` with
# torch; so the interpreter is $LMPIPE_PYTHON if set, else the active virtualenv's, else the
# nearest `.venv` in this folder or above it (a `dvc exp run --temp` workspace lives inside the
# project), else `python` on PATH. The project root goes on PYTHONPATH, so recipes whose stages
# run in their own folder (recipes/*/dvc.yaml) import the same code.
root=$(cd "$(dirname "$0")/.." && pwd)
py=${LMPIPE_PYTHON:-}
if [ -z "$py" ] && [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    py=$VIRTUAL_ENV/bin/python
fi
dir=$root
while [ -z "$py" ] && [ -n "$dir" ]; do
    if [ -x "$dir/.venv/bin/python" ]; then py=$dir/.venv/bin/python; fi
    [ "$dir" = / ] && break
    dir=$(dirname "$dir")
done
stage=$1
shift
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# LMPIPE_TORCHRUN="--nproc_per_node 4" (or --nnodes/--rdzv-endpoint for several machines) runs
# the stages named in LMPIPE_TORCHRUN_STAGES (default: train) under torchrun, one process each
# (data parallel, or the train.mesh of params.yaml); `lmpipe-pipeline --torchrun` sets it.
if [ -n "${LMPIPE_TORCHRUN:-}" ]; then
    for name in ${LMPIPE_TORCHRUN_STAGES:-train}; do
        if [ "$name" = "$stage" ]; then
            # word splitting of the launcher options is wanted here
            # shellcheck disable=SC2086
            exec "${py:-python}" -m torch.distributed.run $LMPIPE_TORCHRUN -m "stages.$stage" "$@"
        fi
    done
fi
# With a warm stage server (lmpipe/core/warm_server.py: torch and transformers imported once),
# the stage runs in a child forked from it; the client falls back to a fresh process by itself.
if [ -n "${LMPIPE_STAGE_SERVER:-}" ] && [ -S "$LMPIPE_STAGE_SERVER" ]; then
    exec "${py:-python}" -S "$root/lmpipe/core/warm_client.py" "$stage" "$@"
fi
exec "${py:-python}" -m "stages.$stage" "$@"
