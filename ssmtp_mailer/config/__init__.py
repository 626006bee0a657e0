"""Configuration: the model, the loader, secrets, and rendering for `config show`."""
