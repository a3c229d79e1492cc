"""Training data: local text and Hugging Face datasets encoded once into a cache, windows, probe tasks."""
