"""decision_api."""
