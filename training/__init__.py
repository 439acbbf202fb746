"""Training, babysitting (sanity, overfit, tune, cv) and export (torch)."""
