"""The simulated OpenAI-compatible endpoint and the synthetic demo data."""
