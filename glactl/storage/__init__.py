"""What glactl keeps on disk: checkpoints, trainer state, saved model states, where models live."""
