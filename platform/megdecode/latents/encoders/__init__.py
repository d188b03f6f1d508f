"""Image encoders: hand-crafted features and frozen pretrained networks, local weights only."""
