"""The machine glactl runs on: devices and dtypes, threads, distributed training, process memory."""
