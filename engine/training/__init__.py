"""Training transcoders: text corpora (the pinned default corpus), the trainer and its
recipes, and the replacement/completeness evaluation."""
