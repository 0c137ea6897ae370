"""The nn.Linear layers an architecture reads by their weight instead of calling them: they stay
float in every quantization (QAT's BitLinear, the packed ternary and int8 exports), whatever
`quantize.skip_modules` says.

transformers 5.24's Mamba mixer computes `dt_proj.weight @ time_step` and adds `dt_proj.bias`
inside the selective scan, so `dt_proj`'s forward never runs: a BitLinear there would train in
float and export ternary (the model trained would not be the model saved), and a loaded
TernaryLinear holds codes, not codes x gamma, in `.weight`. Mamba's other linears (in_proj,
x_proj, out_proj), Mamba-2's (in_proj, out_proj: its dt comes out of in_proj, with a bias
parameter of its own) and every linear of llama and hawk are called as modules.

Mamba's fused training kernel (`mamba_inner_fn` from the `mamba_ssm` package, used when it is
installed) reads in_proj, x_proj and out_proj by weight as well, and Mamba-2's
(`mamba_split_conv1d_scan_combined`, used in training when mamba_ssm is installed) reads
out_proj by weight, either of which would bypass BitLinear in QAT: `check_qat_forward` refuses
that case instead of training the wrong model.
"""

from __future__ import annotations

import importlib.util

from torch import nn

READ_BY_WEIGHT = {"mamba": ("dt_proj",)}  # config.model_type -> linear names read by weight
# config.model_type -> (mamba_ssm's fused training kernel, the linears it reads by weight)
FUSED_TRAINING = {"mamba": ("mamba_inner_fn", "in_proj/x_proj/out_proj"),
                  "mamba2": ("mamba_split_conv1d_scan_combined", "out_proj")}


def read_by_weight(model: nn.Module) -> set[str]:
    """Names of `model`'s nn.Linear modules that its architecture reads by weight."""
    config = getattr(model, "config", None)
    suffixes = READ_BY_WEIGHT.get(getattr(config, "model_type", None), ())
    return {name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in suffixes}


def check_qat_forward(model: nn.Module) -> None:
    """Raise when the training forward would not run through BitLinear's forward."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind in FUSED_TRAINING and importlib.util.find_spec("mamba_ssm"):
        kernel, linears = FUSED_TRAINING[kind]
        raise ValueError(f"train.qat: with mamba_ssm installed, {kind}'s training forward runs the "
                         f"fused {kernel}, which reads {linears} by weight and would bypass "
                         f"BitLinear; uninstall mamba_ssm for QAT of a {kind} model")
