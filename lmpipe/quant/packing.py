"""Ternary codes packed 2 bits each, 4 to a byte, in transformers' BitNet layout, and the module
that computes BitNet inference from them.

Layout: the codes + 1 in 2-bit fields, 4 values per uint8 along dim 0 (shape `(ceil(out/4), in)`;
value i of a packed row comes from rows `[i*row_dim, (i+1)*row_dim)`), exactly what
`transformers.integrations.bitnet.pack_weights` writes. `TernaryLinear` computes what
transformers' BitLinear computes (per-token absmax int8 activations, ternary weights, output
divided by both scales), in float32 and without torch.compile.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from lmpipe.quant.last_input import LastInputMemo

BITNET = "bitnet"
INT8 = "lmpipe_int8"
WEIGHTS_FILE = "model.safetensors"
# The int8 baseline's compact form (int8 codes + scales). transformers knows no such format, so
# the directory's WEIGHTS_FILE holds the same weights dequantized, which it loads as a float model.
INT8_FILE = "lmpipe_int8.safetensors"
VALUES_PER_BYTE = 4  # 2-bit fields in a uint8


# --- packing -------------------------------------------------------------------------------------

def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes (any dtype, values in {-1, 0, 1}) into uint8, 4 per byte along dim 0.

    Byte layout is transformers' `integrations.bitnet.pack_weights`: with `row_dim = ceil(n/4)`,
    packed row r holds rows r, r+row_dim, r+2*row_dim, r+3*row_dim in bits 0-1, 2-3, 4-5, 6-7, each
    stored as code + 1. Rows past the end (n not divisible by 4) are zero bits, as there.
    The input is not modified (transformers' version adds 1 to it in place)."""
    if codes.dim() < 1 or codes.shape[0] == 0:
        raise ValueError(f"pack_ternary: need a tensor with at least one row, got shape "
                         f"{tuple(codes.shape)}")
    if not ((codes == -1) | (codes == 0) | (codes == 1)).all():
        raise ValueError("pack_ternary: codes must all be -1, 0 or 1")
    rows = codes.shape[0]
    row_dim = math.ceil(rows / VALUES_PER_BYTE)
    fields = (codes.to(torch.int16) + 1).to(torch.uint8)
    padding = torch.zeros((VALUES_PER_BYTE * row_dim - rows, *codes.shape[1:]), dtype=torch.uint8,
                          device=codes.device)
    fields = torch.cat([fields, padding]).reshape(VALUES_PER_BYTE, row_dim, *codes.shape[1:])
    packed = fields[0].clone()
    for i in range(1, VALUES_PER_BYTE):
        packed |= fields[i] << (2 * i)
    return packed


def unpack_ternary(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """The int8 codes (`rows` rows) that `pack_ternary` packed into `packed` (uint8).

    transformers' unpack returns all 4*row_dim rows; `rows` drops the zero padding."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_ternary: packed weights must be uint8, got {packed.dtype}")
    if packed.dim() < 1 or math.ceil(rows / VALUES_PER_BYTE) != packed.shape[0] or rows < 1:
        raise ValueError(f"unpack_ternary: {rows} rows pack into {math.ceil(rows / 4)} rows, but "
                         f"the packed tensor has shape {tuple(packed.shape)}")
    fields = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])
    codes = fields.reshape(VALUES_PER_BYTE * packed.shape[0], *packed.shape[1:])[:rows]
    return codes.to(torch.int8) - 1


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Shape of the packed uint8 tensor of an `out_features x in_features` ternary weight."""
    return math.ceil(out_features / VALUES_PER_BYTE), in_features


# --- inference module ----------------------------------------------------------------------------

def _int8_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes of `x` and their scale: the same operations, in the same order,
    as transformers' BitLinear.activation_quant, so results match its to float rounding."""
    x = x.to(torch.float32)
    input_scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    return (x * input_scale).round().clamp(-128, 127), input_scale


# q, k, v (and gate, up) read one tensor: its int8 codes are computed once
_INT8_INPUT = LastInputMemo(_int8_input)


class TernaryLinear(nn.Module):
    """A ternary linear layer computing transformers' BitNet `BitLinear` forward in float32.

    `weight` holds the unpacked codes {-1, 0, 1} as a frozen float32 parameter of the logical shape
    (out, in), so parameter counts and `.weight.shape` read as for the nn.Linear it replaces; its
    state_dict is therefore not the packed format (re-export from the float model instead)."""

    def __init__(self, codes: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.weight = nn.Parameter(codes.to(torch.float32), requires_grad=False)
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).reshape(1))
        self.bias = (nn.Parameter(bias.to(torch.float32), requires_grad=False)
                     if bias is not None else None)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, weight_scale: torch.Tensor, out_features: int,
                    bias: torch.Tensor | None = None) -> TernaryLinear:
        return cls(unpack_ternary(packed, out_features), weight_scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_quant, input_scale = _INT8_INPUT(x)
        y = F.linear(x_quant, self.weight) / (self.weight_scale * input_scale)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def converted_by_transformers(name: str, patterns: list[str]) -> bool:
    """transformers' should_convert_module rule for modules_to_not_convert, so both loaders pick
    the same layers: a pattern skips a module when it matches (as a regex) from the start up to a
    module boundary, or is a suffix of its name."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return not any(re.match(rf"(?:{p}){boundary}", name) or name.endswith(p) for p in patterns)
