"""The TOML file -> a validated model.Config: value parsers, checks, secret and TLS files."""
