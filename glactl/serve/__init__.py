"""`glactl serve`: an OpenAI-compatible local server; sessions are saved model states."""
