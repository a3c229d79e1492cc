"""Running a trained model: reading text, sampling, generation, completion, scoring, precision, compiled steps."""
