"""Models: build (llama, mamba, mamba2, hawk), sizing by parameter count, weight init, RoPE scaling,
pretrained import, cards and low-bit export."""
