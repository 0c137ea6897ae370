"""Models: build, weight init, RoPE scaling, pretrained import, cards and low-bit export."""
