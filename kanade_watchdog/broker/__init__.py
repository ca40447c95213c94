"""The only package that talks NATS: the JetStream API, connections, applying decisions."""
