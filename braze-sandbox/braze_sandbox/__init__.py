"""braze-sandbox."""
