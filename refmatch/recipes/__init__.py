"""Reference training recipe: U-Net, mean teacher and reference-guided pseudo-labels."""
