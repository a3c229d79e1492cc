"""Training: options, schedule, run folder and lock, set-up and the trainer loop behind `glactl train`."""
