"""Attribution graphs: models, transcoders, the local replacement model, attribution, pruning, interventions, training."""
